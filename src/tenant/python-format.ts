/**
 * Text as upstream's Python tenant prints it, for the lines scripts grep: `json.dumps` with its defaults (`", "` and
 * `": "` separators, everything outside printable ASCII escaped as `\uXXXX`) for agent records, and Python's `repr`
 * of a dict for the policy commands, which print the verifier's answer with `print(response_json)`.
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

/** Python's `repr` of JSON-like data: `{'code': 200, 'results': {'names': ['a']}}`, `None`, `True`. */
export function pythonRepr(value: unknown): string {
  if (value === null || value === undefined) return 'None'
  if (Array.isArray(value)) return `[${value.map(pythonRepr).join(', ')}]`
  if (typeof value === 'object')
    return `{${Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${reprString(k)}: ${pythonRepr(v)}`)
      .join(', ')}}`
  if (typeof value === 'string') return reprString(value)
  if (typeof value === 'boolean') return value ? 'True' : 'False'
  return String(value)
}

const NAMED_ESCAPES: Record<string, string> = { '\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r' }

/** A str's repr: single quotes unless the text has `'` and no `"`; control characters as `\xNN`. */
function reprString(s: string): string {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'"
  let out = quote
  for (const c of s) {
    const code = c.codePointAt(0) as number
    if (NAMED_ESCAPES[c] !== undefined) out += NAMED_ESCAPES[c]
    else if (c === quote) out += `\\${c}`
    else if (code < 0x20 || (code >= 0x7f && code < 0xa0)) out += `\\x${code.toString(16).padStart(2, '0')}`
    else out += c
  }
  return out + quote
}
