// Segment's Node SDK (@segment/analytics-node) sending one lead's journey, configured the
// way the README says: `host` is the service's root URL.
//
//   node segment-node.mjs HOST WRITE_KEY USER_ID EMAIL
//
// The SDK reports failed deliveries only on its 'error' event, so that is attached and any
// error makes the exit status non-zero. Each request and response is printed as one JSON
// line on stdout for the test to read.
import { Analytics } from '@segment/analytics-node'

const [host, writeKey, userId, email] = process.argv.slice(2)
if (!host || !writeKey || !userId || !email) {
  console.error('usage: node segment-node.mjs HOST WRITE_KEY USER_ID EMAIL')
  process.exit(2)
}

const analytics = new Analytics({ writeKey, host, flushInterval: 100, maxRetries: 0 })
const errors = []
analytics.on('error', (err) => {
  errors.push({ code: err.code, reason: String(err.reason?.message ?? err.reason) })
})
analytics.on('http_request', ({ url, method, headers }) => {
  console.log(JSON.stringify({ request: { url, method, headers } }))
})
analytics.on('http_response', ({ url, status, body }) => {
  console.log(JSON.stringify({ response: { url, status } }))
})

analytics.identify({ userId, traits: { email, title: 'VP Sales' } })
analytics.track({ userId, event: 'Demo Requested', properties: { plan: 'enterprise' } })
analytics.page({
  userId,
  name: 'Pricing',
  properties: { path: '/pricing', url: 'https://www.example.com/pricing' },
})

await analytics.closeAndFlush({ timeout: 20000 })
if (errors.length > 0) {
  console.error(JSON.stringify({ errors }))
  process.exit(1)
}
