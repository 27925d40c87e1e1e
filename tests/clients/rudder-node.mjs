// RudderStack's Node SDK (@rudderstack/rudder-sdk-node) sending one lead's journey,
// configured the way the README says: `dataPlaneUrl` is the service's root URL.
//
//   node rudder-node.mjs DATA_PLANE_URL WRITE_KEY USER_ID EMAIL
//
// Without an errorHandler the SDK only logs a failed flush; with one, every error is
// collected here and makes the exit status non-zero.
import Analytics from '@rudderstack/rudder-sdk-node'

const [dataPlaneUrl, writeKey, userId, email] = process.argv.slice(2)
if (!dataPlaneUrl || !writeKey || !userId || !email) {
  console.error('usage: node rudder-node.mjs DATA_PLANE_URL WRITE_KEY USER_ID EMAIL')
  process.exit(2)
}

const errors = []
const client = new Analytics(writeKey, {
  dataPlaneUrl,
  flushInterval: 100,
  retryCount: 0,
  logLevel: 'error',
  errorHandler: (err) => {
    errors.push({
      message: err.message,
      status: err.response?.status,
      body: err.response?.data,
    })
  },
})

client.identify({ userId, traits: { email, title: 'VP Sales' } })
client.track({ userId, event: 'Demo Requested', properties: { plan: 'enterprise' } })
client.page({
  userId,
  name: 'Pricing',
  properties: { path: '/pricing', url: 'https://www.example.com/pricing' },
})

await new Promise((resolve) => client.flush((err) => resolve(err)))
if (errors.length > 0) {
  console.error(JSON.stringify({ errors }))
  process.exit(1)
}
