/**
 * Runtime-policy `excludes` are Python `re` patterns applied with `re.match` (anchored at the start only). They are
 * translated to JS RegExp syntax where the meaning is the same and rejected (never dropped) where it is not.
 */

export class ExcludeSyntaxError extends Error {}

/** Translates one Python pattern to JS source; throws `ExcludeSyntaxError` naming the unsupported construct. */
export function translatePythonRegex(pattern: string): { source: string; usesGroupRefs: boolean } {
  let out = ''
  let usesGroupRefs = false
  let i = 0
  const n = pattern.length
  const unsupported = (what: string): never => {
    throw new ExcludeSyntaxError(`${what} at position ${i} is not supported (no JavaScript equivalent)`)
  }
  while (i < n) {
    const c = pattern[i] as string
    if (c === '\\') {
      const next = pattern[i + 1]
      if (next === undefined) throw new ExcludeSyntaxError('pattern ends with a lone backslash')
      if (next === 'A') out += '^'
      else if (next === 'Z' || next === 'z') out += '$'
      else if (/[1-9]/.test(next)) {
        usesGroupRefs = true
        out += `\\${next}`
      } else out += `\\${next}`
      i += 2
      continue
    }
    if (c === '[') {
      // Character class: copied verbatim, except that a `]` right after `[` or `[^` is literal in Python.
      let j = i + 1
      out += '['
      if (pattern[j] === '^') {
        out += '^'
        j++
      }
      if (pattern[j] === ']') {
        out += '\\]'
        j++
      }
      while (j < n && pattern[j] !== ']') {
        if (pattern[j] === '\\') {
          out += pattern.slice(j, j + 2)
          j += 2
        } else {
          if (pattern[j] === '[' && pattern[j + 1] === ':') unsupported('POSIX class inside []')
          out += pattern[j]
          j++
        }
      }
      if (j >= n) throw new ExcludeSyntaxError(`unterminated character set at position ${i}`)
      out += ']'
      i = j + 1
      continue
    }
    if (c === '(' && pattern[i + 1] === '?') {
      const rest = pattern.slice(i + 2)
      if (rest.startsWith('P<')) {
        out += '(?<'
        i += 4
        usesGroupRefs = true
        continue
      }
      if (rest.startsWith('P=')) {
        const end = pattern.indexOf(')', i)
        if (end < 0) throw new ExcludeSyntaxError(`unterminated (?P= at position ${i}`)
        out += `\\k<${pattern.slice(i + 4, end)}>`
        usesGroupRefs = true
        i = end + 1
        continue
      }
      if (rest.startsWith('#')) {
        const end = pattern.indexOf(')', i)
        if (end < 0) throw new ExcludeSyntaxError(`unterminated comment at position ${i}`)
        i = end + 1
        continue
      }
      if (
        rest.startsWith(':') ||
        rest.startsWith('=') ||
        rest.startsWith('!') ||
        rest.startsWith('<=') ||
        rest.startsWith('<!')
      ) {
        out += '(?'
        i += 2
        continue
      }
      if (rest.startsWith('>')) unsupported('atomic group (?>...)')
      if (rest.startsWith('(')) unsupported('conditional group (?(...)...)')
      if (rest.startsWith('<')) {
        out += '(?<'
        i += 3
        usesGroupRefs = true
        continue
      }
      unsupported('inline flag group (?...)')
    }
    if ((c === '+' || c === '*' || c === '?' || c === '}') && pattern[i + 1] === '+') {
      out += c
      i += 1
      unsupported('possessive quantifier')
    }
    out += c
    i++
  }
  try {
    new RegExp(out)
  } catch (err) {
    throw new ExcludeSyntaxError(`invalid regular expression: ${(err as Error).message}`)
  }
  return { source: out, usesGroupRefs }
}

/** Tests paths against a compiled exclude list with Python `re.match` semantics. */
export interface ExcludeMatcher {
  readonly patterns: readonly string[]
  test(path: string): boolean
}

/** Compiles excludes into one anchored alternation (or one RegExp each when group references would clash). */
export function compileExcludes(patterns: readonly string[]): ExcludeMatcher | null {
  if (patterns.length === 0) return null
  const translated = patterns.map((p) => translatePythonRegex(p))
  if (translated.length === 1 || !translated.some((t) => t.usesGroupRefs)) {
    const re = new RegExp(`^(?:${translated.map((t) => `(?:${t.source})`).join('|')})`)
    return Object.freeze({ patterns: Object.freeze([...patterns]), test: (path: string) => re.test(path) })
  }
  const list = translated.map((t) => new RegExp(`^(?:${t.source})`))
  return Object.freeze({
    patterns: Object.freeze([...patterns]),
    test: (path: string) => list.some((re) => re.test(path)),
  })
}
