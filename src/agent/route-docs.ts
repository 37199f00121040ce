/**
 * The typebox schemas of the agent's routes and its OpenAPI document. Documentation only: the routes check their
 * input with the rules written out in `app.ts`, and the HTTP layer imports this module on the first `/openapi.json`
 * request (or when a test walks the route table), so typebox is not resident in a running agent.
 */
import { Type } from '@sinclair/typebox'
import {
  AgentInfoResults,
  AgentVersionResults,
  IdentityQuoteQuery,
  IdentityQuoteResults,
  IntegrityQuoteQuery,
  IntegrityQuoteResults,
  PubkeyResults,
  RevocationBody,
  UkeyBody,
  VerifyQuery,
  VerifyResults,
  VkeyBody,
} from '../api/agent/schemas.ts'
import { Envelope, ErrorEnvelope } from '../api/schemas.ts'
import type { RouteSchema, RouteTableEntry } from './http-server.ts'

const errors = { 400: ErrorEnvelope }
const EmptyEnvelope = Envelope(Type.Object({}))

/** Each route's schemas by method and path below the version prefix (`/version` has none). */
export const AGENT_ROUTE_SCHEMAS: Readonly<Record<string, RouteSchema>> = {
  'GET /version': { summary: 'API versions served', response: { 200: Envelope(AgentVersionResults) } },
  'GET /agent/info': {
    summary: 'Agent identity and TPM algorithms',
    response: { 200: Envelope(AgentInfoResults), ...errors },
  },
  'GET /keys/pubkey': {
    summary: 'Payload public key (PEM)',
    response: { 200: Envelope(PubkeyResults), ...errors },
  },
  'GET /quotes/identity': {
    summary: 'Identity quote (PCR 16 bound to the payload key)',
    querystring: IdentityQuoteQuery,
    response: { 200: Envelope(IdentityQuoteResults), ...errors },
  },
  'GET /quotes/integrity': {
    summary: 'Integrity quote with the IMA list from an entry and the boot log',
    querystring: IntegrityQuoteQuery,
    response: { 200: Envelope(IntegrityQuoteResults), ...errors },
  },
  'POST /keys/ukey': {
    summary: 'Deliver the U key share (and the encrypted payload)',
    body: UkeyBody,
    response: { 200: EmptyEnvelope, ...errors },
  },
  'POST /keys/vkey': {
    summary: 'Deliver the V key share',
    body: VkeyBody,
    response: { 200: EmptyEnvelope, ...errors },
  },
  'GET /keys/verify': {
    summary: 'HMAC of a challenge with the bootstrap key K',
    querystring: VerifyQuery,
    response: { 200: Envelope(VerifyResults), ...errors },
  },
  'POST /notifications/revocation': {
    summary: 'Signed revocation notification (verified asynchronously)',
    body: RevocationBody,
    response: { 200: EmptyEnvelope, ...errors },
  },
}

/** OpenAPI 3 document of the newest version's routes and `/version` (older prefixes serve the same routes). */
export function openapiDocument(table: readonly RouteTableEntry[], latest: string): unknown {
  const paths: Record<string, Record<string, unknown>> = {}
  for (const r of table) {
    if (/^\/v\d/.test(r.url) && !r.url.startsWith(`/v${latest}/`)) continue
    const s = r.schema
    if (!s) continue
    const query = s.querystring as { properties: Record<string, unknown>; required?: string[] } | undefined
    const responses = Object.fromEntries(
      Object.entries(s.response).map(([code, schema]) => [
        code,
        { description: code === '200' ? 'Success' : 'Error', content: { 'application/json': { schema } } },
      ]),
    )
    paths[r.url] ??= {}
    ;(paths[r.url] as Record<string, unknown>)[r.method.toLowerCase()] = {
      summary: s.summary,
      ...(query
        ? {
            parameters: Object.entries(query.properties).map(([name, schema]) => ({
              name,
              in: 'query',
              required: query.required?.includes(name) ?? false,
              schema,
            })),
          }
        : {}),
      ...(s.body
        ? { requestBody: { required: true, content: { 'application/json': { schema: s.body } } } }
        : {}),
      responses,
    }
  }
  return { openapi: '3.0.3', info: { title: 'Keylime agent (pull)', version: latest }, paths }
}
