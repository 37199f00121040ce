/**
 * Regular expressions from policies (runtime-policy `excludes`, `dm_policy` values, measured-boot `kernel_cmdline`)
 * are written in Python `re` syntax, as upstream evaluates them. Anyone who may upload a policy could otherwise
 * freeze the verifier with a pattern that backtracks exponentially, so they run on RE2JS (a port of RE2: time linear
 * in the input). Each pattern is translated to RE2 syntax construct by construct; what Python reads differently, or
 * what cannot run in linear time (backreferences, lookaround, atomic groups, possessive quantifiers, conditionals),
 * is refused with a message naming it, never dropped or approximated.
 */
import { RE2JS, RE2JSException } from 're2js'

export class PythonRegexError extends Error {}

/**
 * Upper bound on the compiled program of one regular expression (RE2 instructions). Matching costs at most program
 * size × input length steps, so a huge pattern would be a slow pattern; real exclude lists compile to a few hundred.
 */
export const MAX_REGEX_PROGRAM_SIZE = 5_000

const ASCII_LETTER_OR_DIGIT = /^[A-Za-z0-9]$/
const HEX = /^[0-9A-Fa-f]+$/
const OCTAL_DIGIT = /^[0-7]$/
const GROUP_NAME = /^[\p{L}_][\p{L}\p{N}_]*$/u

function codePoint(value: number): string {
  return `\\x{${value.toString(16)}}`
}

// Python's classes for text patterns are Unicode: \w is what str.isalnum() accepts plus `_`, \d the decimal digits,
// \s str.isspace(). RE2's are ASCII, and its \s also leaves out \v.
const UNICODE_WORD = '\\p{L}\\p{N}_'
const UNICODE_DIGIT = '\\p{Nd}'
const UNICODE_SPACE = '\\s\\v\\x{1c}-\\x{1f}\\x{85}\\p{Z}'
const ASCII_SPACE = '\\s\\v'

/**
 * Translates one Python `re` pattern to RE2 syntax; throws `PythonRegexError` naming what is not accepted. `how`
 * matters for `$`: Python's also matches before a final newline, which a prefix match may consume.
 */
export function translatePythonRegex(pattern: string, how: 'match' | 'fullmatch' = 'match'): string {
  let out = ''
  let i = 0
  const n = pattern.length
  /** `(?a)`: ASCII classes, as RE2's own. */
  let ascii = false
  let multiline = false
  const enclosingMultiline: boolean[] = []
  const refuse = (what: string, at = i): never => {
    throw new PythonRegexError(`${what} at position ${at}`)
  }

  /** Escapes shared by both contexts; returns null for letters whose meaning depends on the context. */
  const commonEscape = (c: string, at: number): string | null => {
    if (c === 'a' || c === 'f' || c === 'n' || c === 'r' || c === 't' || c === 'v') return `\\${c}`
    if (c === 'x' || c === 'u' || c === 'U') {
      const width = c === 'x' ? 2 : c === 'u' ? 4 : 8
      const digits = pattern.slice(at + 2, at + 2 + width)
      if (digits.length !== width || !HEX.test(digits)) refuse(`\\${c} needs exactly ${width} hex digits`, at)
      const value = Number.parseInt(digits, 16)
      if (value > 0x10ffff) refuse(`\\${c}${digits} is beyond Unicode`, at)
      i = at + 2 + width
      return codePoint(value)
    }
    if (c === 'N') return refuse('named Unicode character \\N{...} is not supported', at)
    return null
  }

  /** Octal escape of up to `max` digits starting at `from`; returns the RE2 form and moves `i`. */
  const octal = (from: number, max: number, at: number): string => {
    let j = from
    while (j < from + max && j < n && OCTAL_DIGIT.test(pattern[j] as string)) j++
    const value = Number.parseInt(pattern.slice(from, j), 8)
    if (value > 0o377) refuse(`octal escape \\${pattern.slice(from, j)} is beyond \\377`, at)
    i = j
    return codePoint(value)
  }

  /** Consumes `\c`: the character, where the escape began, and the translation both contexts share (or null). */
  const startEscape = (): { c: string; at: number; common: string | null } => {
    const at = i
    const c = pattern[i + 1]
    if (c === undefined) return refuse('pattern ends with a lone backslash')
    i += 2
    return { c, at, common: commonEscape(c, at) }
  }

  const escapeOutsideClass = (): string => {
    const { c, at, common } = startEscape()
    if (common !== null) return common
    switch (c) {
      case 'A':
        return '\\A'
      case 'Z':
        return '\\z'
      // RE2's word boundary is ASCII; Python's is Unicode (documented difference).
      case 'b':
      case 'B':
        return `\\${c}`
      case 'w':
        return ascii ? '\\w' : `[${UNICODE_WORD}]`
      case 'W':
        return ascii ? '\\W' : `[^${UNICODE_WORD}]`
      case 'd':
        return ascii ? '\\d' : UNICODE_DIGIT
      case 'D':
        return ascii ? '\\D' : '\\P{Nd}'
      case 's':
        return `[${ascii ? ASCII_SPACE : UNICODE_SPACE}]`
      case 'S':
        return `[^${ascii ? ASCII_SPACE : UNICODE_SPACE}]`
    }
    if (c === '0') return octal(at + 1, 3, at)
    if (c >= '1' && c <= '9') {
      const d2 = pattern[at + 2]
      const d3 = pattern[at + 3]
      if (
        OCTAL_DIGIT.test(c) &&
        d2 !== undefined &&
        d3 !== undefined &&
        OCTAL_DIGIT.test(d2) &&
        OCTAL_DIGIT.test(d3)
      )
        return octal(at + 1, 3, at)
      return refuse(`backreference \\${c} cannot run in linear time`, at)
    }
    if (ASCII_LETTER_OR_DIGIT.test(c)) return refuse(`bad escape \\${c}`, at)
    // Escaped punctuation stays escaped; an escaped non-ASCII character is the character itself.
    return c.charCodeAt(0) < 0x80 ? `\\${c}` : c
  }

  const escapeInClass = (): string => {
    const { c, at, common } = startEscape()
    if (common !== null) return common
    if (c === 'b') return '\\x{8}' // backspace inside a set, as in Python
    if (c === 'w') return ascii ? '\\w' : UNICODE_WORD
    if (c === 'd') return ascii ? '\\d' : UNICODE_DIGIT
    if (c === 'D') return ascii ? '\\D' : '\\P{Nd}'
    if (c === 's') return ascii ? ASCII_SPACE : UNICODE_SPACE
    if (c === 'W' && ascii) return '\\W'
    // A complement of several ranges cannot be one member of a set; `[^...]` says the same.
    if (c === 'W' || c === 'S') return refuse(`\\${c} inside a character set is not supported`, at)
    if (OCTAL_DIGIT.test(c)) return octal(at + 1, 3, at)
    if (ASCII_LETTER_OR_DIGIT.test(c)) return refuse(`bad escape \\${c} in a character set`, at)
    return c.charCodeAt(0) < 0x80 ? `\\${c}` : c
  }

  const characterClass = (): string => {
    const start = i
    let cls = '['
    i++
    if (pattern[i] === '^') {
      cls += '^'
      i++
    }
    // Python reads a `]` right after `[` or `[^` as a literal.
    if (pattern[i] === ']') {
      cls += '\\]'
      i++
    }
    while (i < n && pattern[i] !== ']') {
      const c = pattern[i] as string
      if (c === '\\') cls += escapeInClass()
      else if (c === '[') {
        if (pattern[i + 1] === ':') refuse('POSIX class [:...:] (Python reads it as a plain set)')
        cls += '\\['
        i++
      } else {
        cls += c
        i++
      }
    }
    if (i >= n) refuse('unterminated character set', start)
    i++
    return `${cls}]`
  }

  /** `(?...)` forms: named and non-capturing groups, comments and inline flags are translated; the rest refused. */
  const extension = (atStart: boolean): string => {
    const at = i
    const rest = pattern.slice(i + 2)
    if (rest.startsWith(':')) {
      i += 3
      enclosingMultiline.push(multiline)
      return '(?:'
    }
    if (rest.startsWith('P<')) {
      const end = pattern.indexOf('>', i + 4)
      const name = end < 0 ? '' : pattern.slice(i + 4, end)
      if (!GROUP_NAME.test(name)) refuse('bad group name in (?P<...>)')
      i = end + 1
      enclosingMultiline.push(multiline)
      // A plain group: names may repeat across the joined exclude list, and matching needs no captures.
      return '('
    }
    if (rest.startsWith('P=')) return refuse('backreference (?P=...) cannot run in linear time')
    if (rest.startsWith('#')) {
      const end = pattern.indexOf(')', i)
      if (end < 0) refuse('unterminated comment (?#...)')
      i = end + 1
      return ''
    }
    if (rest.startsWith('=') || rest.startsWith('!')) return refuse('lookahead cannot run in linear time')
    if (rest.startsWith('<=') || rest.startsWith('<!')) return refuse('lookbehind cannot run in linear time')
    if (rest.startsWith('>')) return refuse('atomic group (?>...) cannot run in linear time')
    if (rest.startsWith('(')) return refuse('conditional group (?(...)...) cannot run in linear time')
    const flags = /^([aiLmsux]*)(?:-([imsx]*))?([:)])/.exec(rest)
    if (flags === null) return refuse('unknown extension (?...)')
    const [whole, on = '', off = '', close] = flags
    if (on.includes('x') || off.includes('x')) refuse('verbose flag x is not supported')
    if (on.includes('L')) refuse('locale flag L is not supported')
    if (on.includes('a') && on.includes('u')) refuse('flags a and u are incompatible')
    // u: Python's default for text patterns.
    const keep = (f: string) => [...f].filter((c) => c === 'i' || c === 'm' || c === 's').join('')
    const set = keep(on)
    const clear = keep(off)
    i += 2 + whole.length
    if (close === ')') {
      if (off !== '' || whole === ')') refuse('bad inline flags', at)
      if (!atStart) refuse('global flags not at the start of the expression', at)
      if (on.includes('a')) ascii = true
      if (on.includes('m')) multiline = true
      return set === '' ? '' : `(?${set})`
    }
    if (on.includes('a')) refuse('a scoped ASCII flag (?a:...) is not supported', at)
    enclosingMultiline.push(multiline)
    if (set.includes('m')) multiline = true
    if (clear.includes('m')) multiline = false
    if (set === '' && clear === '') return '(?:'
    return `(?${set}${clear === '' ? '' : `-${clear}`}:`
  }

  let lastWasRepeat = false
  let lastWasAnchor = false
  let onlyFlagsSoFar = true
  while (i < n) {
    const c = pattern[i] as string
    let repeat = false
    let anchor = false
    let piece: string
    if (c === '\\') {
      const e = pattern[i + 1]
      anchor = e === 'A' || e === 'Z' || e === 'b' || e === 'B'
      piece = escapeOutsideClass()
    } else if (c === '[') piece = characterClass()
    else if (c === '(' && pattern[i + 1] === '?') {
      const isFlags = /^\(\?[aiLmsux]+\)/.test(pattern.slice(i))
      piece = extension(onlyFlagsSoFar)
      if (isFlags) {
        // Global flags may follow each other at the start of the pattern.
        out += piece
        lastWasRepeat = false
        continue
      }
    } else if (c === '(') {
      enclosingMultiline.push(multiline)
      piece = c
      i++
    } else if (c === ')') {
      multiline = enclosingMultiline.pop() ?? multiline
      piece = c
      i++
    } else if (c === '^' || c === '$') {
      anchor = true
      // Python's `$` also matches before a newline that ends the text; a prefix match may take that newline.
      piece = c === '^' || multiline ? c : how === 'match' ? '(?:\\n?\\z)' : '\\z'
      i++
    } else if (c === '{') {
      // Python's repeat forms include {,n} and {,}; anything else with a brace is literal text.
      const m = /^\{(\d*)(,(\d*))?\}/.exec(pattern.slice(i))
      if (m !== null && (m[1] !== '' || m[2] !== undefined)) {
        piece = m[2] === undefined ? `{${m[1]}}` : `{${m[1] === '' ? '0' : m[1]},${m[3]}}`
        i += m[0].length
        repeat = true
      } else {
        piece = '\\{'
        i++
      }
    } else if (c === '}') {
      piece = '\\}'
      i++
    } else {
      piece = c
      i++
      repeat = c === '*' || c === '+' || c === '?'
    }
    if (repeat && lastWasRepeat && c === '+') refuse('possessive quantifier cannot run in linear time', i - 1)
    if (repeat && lastWasAnchor) refuse('nothing to repeat (a quantifier after an anchor)', i - 1)
    if (repeat && pattern[i] === '?') {
      piece += '?' // lazy: the same in RE2
      i++
      repeat = false
    }
    lastWasRepeat = repeat
    lastWasAnchor = anchor
    onlyFlagsSoFar = false
    out += piece
  }
  return out
}

/** A compiled policy regex: `test` answers in time linear in the text. */
export interface LinearRegex {
  /** The patterns as given (Python syntax). */
  readonly patterns: readonly string[]
  test(text: string): boolean
}

/**
 * Compiles Python patterns into one RE2 program. `match`: any of them matches at the start of the text (Python
 * `re.match`); `fullmatch`: one matches the whole text (`re.fullmatch`). Throws `PythonRegexError`.
 */
export function compilePythonRegex(patterns: readonly string[], how: 'match' | 'fullmatch'): LinearRegex {
  const body = patterns.map((p) => `(?:${translatePythonRegex(p, how)})`).join('|')
  let re: RE2JS
  try {
    re = RE2JS.compile(how === 'match' ? `\\A(?:${body})` : `\\A(?:${body})\\z`)
  } catch (err) {
    if (err instanceof RE2JSException) {
      throw new PythonRegexError(`not accepted by the linear-time engine: ${err.message}`)
    }
    throw err
  }
  if (re.programSize() > MAX_REGEX_PROGRAM_SIZE) {
    throw new PythonRegexError(
      `compiles to ${re.programSize()} instructions, more than the ${MAX_REGEX_PROGRAM_SIZE} allowed`,
    )
  }
  return Object.freeze({ patterns: Object.freeze([...patterns]), test: (text: string) => re.test(text) })
}
