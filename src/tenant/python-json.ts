/**
 * JSON text as Python's `json.dumps` writes it with its defaults (`", "` and `": "` separators, non-ASCII escaped
 * as `\uXXXX`): upstream's tenant prints its results this way, and scripts grep them (`"operational_state": "Get
 * Quote"`), so the tenant's human-readable output keeps the same spelling.
 */
export function pythonJsonDumps(value: unknown): string {
  if (value === null || value === undefined) return 'null'
  if (Array.isArray(value)) return `[${value.map(pythonJsonDumps).join(', ')}]`
  if (typeof value === 'object')
    return `{${Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${asciiString(k)}: ${pythonJsonDumps(v)}`)
      .join(', ')}}`
  if (typeof value === 'string') return asciiString(value)
  if (typeof value === 'boolean') return value ? 'true' : 'false'
  if (typeof value === 'number') return Number.isFinite(value) ? String(value) : 'null'
  return asciiString(String(value))
}

function asciiString(s: string): string {
  return JSON.stringify(s).replace(
    /[\u007f-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  )
}
