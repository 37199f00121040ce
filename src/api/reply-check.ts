/**
 * Checks of a peer's reply written as plain functions, for clients that must not load typebox: the pull and push
 * agents check the registrar's few answers with these (typebox and its compiler were megabytes of the agent's
 * resident memory, docs/agent.md). A field is declared as `string`, `integer` or `string[]`, `|null` when null is
 * allowed and a trailing `?` when it may be absent; unknown fields are accepted, as by the typebox schemas.
 */

/** Null when a value fits, else where and what does not (`/regcount: expected integer`). */
export interface ReplyCheck<T> {
  (value: unknown): string | null
  /** Type only: what a fitting value is. */
  readonly fits?: T
}

type BaseKind = 'string' | 'integer' | 'string[]'
export type FieldSpec = `${BaseKind}${'' | '|null'}${'' | '?'}`

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v)

function fitsKind(kind: BaseKind, v: unknown): boolean {
  if (kind === 'string') return typeof v === 'string'
  if (kind === 'integer') return Number.isInteger(v)
  return Array.isArray(v) && v.every((x) => typeof x === 'string')
}

/** A JSON object with the given fields (others ignored). */
export function objectCheck<T>(fields: Readonly<Record<string, FieldSpec>>): ReplyCheck<T> {
  const parsed = Object.entries(fields).map(([name, spec]) => {
    const optional = spec.endsWith('?')
    const body = optional ? spec.slice(0, -1) : spec
    const nullable = body.endsWith('|null')
    return { name, spec: body, kind: (nullable ? body.slice(0, -5) : body) as BaseKind, nullable, optional }
  })
  return (value) => {
    if (!isRecord(value)) return '/: expected object'
    for (const f of parsed) {
      const v = value[f.name]
      if (v === undefined) {
        if (f.optional) continue
        return `/${f.name}: expected required property`
      }
      if (v === null ? !f.nullable : !fitsKind(f.kind, v)) return `/${f.name}: expected ${f.spec}`
    }
    return null
  }
}

/** An object of any fields, or null: the empty results of an answer that carries none. */
export const emptyResultsCheck: ReplyCheck<Record<string, never> | null> = (value) =>
  value === null || isRecord(value) ? null : '/: expected object or null'
