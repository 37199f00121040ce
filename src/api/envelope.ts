/** The v2 response envelope `{code, status, results}` used by agent, registrar and verifier (keylime-api.md §0.3). */
export interface V2Envelope<T = Record<string, unknown>> {
  code: number
  status: string
  results: T
}

export function envelope<T>(code: number, status: string, results: T): V2Envelope<T> {
  return { code, status, results }
}

export const ok = <T>(results: T, status = 'Success'): V2Envelope<T> => envelope(200, status, results)

export const errorEnvelope = (code: number, status: string): V2Envelope<Record<string, never>> =>
  envelope(code, status, {})
