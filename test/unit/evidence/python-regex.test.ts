import { describe, expect, it } from 'vitest'
import {
  compilePythonRegex,
  MAX_REGEX_PROGRAM_SIZE,
  PythonRegexError,
  translatePythonRegex,
} from '../../../src/evidence/python-regex.ts'

const match = (pattern: string, text: string) => compilePythonRegex([pattern], 'match').test(text)
const fullmatch = (pattern: string, text: string) => compilePythonRegex([pattern], 'fullmatch').test(text)

describe('Python re patterns on the linear-time engine', () => {
  it('answers the exponential-backtracking pattern in linear time', () => {
    // With a backtracking engine 30 a's take seconds and every further `a` doubles it.
    const hostile = compilePythonRegex(['/(a+)+$', '(a|aa)+$', '(.*)*x'], 'match')
    const path = `/${'a'.repeat(5000)}!`
    const started = performance.now()
    expect(hostile.test(path)).toBe(false)
    expect(hostile.test(`/${'a'.repeat(5000)}`)).toBe(true)
    expect(performance.now() - started).toBeLessThan(500)
  })

  it('keeps re.match (anchored at the start only) and re.fullmatch semantics', () => {
    expect(match('/tmp', '/tmpfoo/x')).toBe(true)
    expect(match('/tmp', '/var/tmp')).toBe(false)
    expect(fullmatch('/tmp', '/tmpfoo')).toBe(false)
    expect(fullmatch('/tmp|/var', '/var')).toBe(true)
    expect(fullmatch('a$', 'a\n')).toBe(false)
    expect(match('.*\\.pyc$', '/x.pyc')).toBe(true)
    expect(match('.*\\.pyc$', '/x.pyc.bak')).toBe(false)
    const joined = compilePythonRegex(['/tmp', 'boot_aggregate'], 'match')
    expect([joined.test('/tmp/a'), joined.test('boot_aggregate'), joined.test('/usr')]).toEqual([
      true,
      true,
      false,
    ])
  })

  it.each([
    // pattern, text, Python's re.match answer
    ['\\A/x\\Z', '/x', true],
    ['\\A/x\\Z', '/xy', false],
    ['/x(?#a comment)/y', '/x/y', true],
    ['[]a]+$', ']a]', true],
    ['[^]a]', 'b', true],
    ['[^]a]', ']', false],
    ['a{,2}b', 'aab', true],
    ['a{,2}$', 'aaa', false],
    ['a{,}b', 'aaaab', true],
    ['a{}', 'a{}', true],
    ['a{x}', 'a{x}', true],
    ['\\x41\\u0042\\U00000043', 'ABC', true],
    ['\\101\\0', 'A\0', true],
    ['[\\101]', 'A', true],
    ['[\\b]', '\b', true],
    ['\\s', '\v', true],
    ['[\\s]', '\v', true],
    ['\\S', '\v', false],
    ['\\d+$', '123', true],
    ['\\w+$', 'a_1', true],
    ['\\w+$', 'é²_', true],
    ['(?a)\\w', 'é', false],
    ['\\d', '٣', true],
    ['[\\d]', '٣', true],
    ['\\s', '\u00a0', true],
    ['(?a)\\s', '\u00a0', false],
    ['a$', 'a\n', true],
    ['a$', 'a\nb', false],
    ['(?m)a$', 'a\nb', true],
    ['(?m:a$)', 'a\nb', true],
    ['(?m:(?:a)$)', 'a\nb', true],
    ['(?m:(?P<g>a)$)', 'a\nb', true],
    ['(?m:a)$', 'a\nb', false],
    ['\\bfoo\\b', 'foo bar', true],
    ['(?i)/TMP', '/tmp', true],
    ['(?i:/TMP)/X', '/tmp/X', true],
    ['(?i:/TMP)/X', '/tmp/x', false],
    ['(?s).x', '\nx', true],
    ['.x', '\nx', false],
    ['(?a)\\w', 'a', true],
    ['\\ \\-\\#\\&\\~', ' -#&~', true],
    ['\\é', 'é', true],
    ['/x}', '/x}', true],
    ['a*?b', 'aab', true],
    ['(?P<n>/opt)/', '/opt/', true],
  ])('translates %s so that matching %j is %s', (pattern, text, expected) => {
    expect(match(pattern, text)).toBe(expected)
  })

  it.each([
    ['(a)\\1', /backreference \\1/],
    ['(?P<d>a)(?P=d)', /backreference \(\?P=/],
    ['a(?=b)', /lookahead/],
    ['a(?!b)', /lookahead/],
    ['(?<=a)b', /lookbehind/],
    ['(?<!a)b', /lookbehind/],
    ['(?>a)', /atomic group/],
    ['(?(1)a|b)', /conditional/],
    ['a*+', /possessive/],
    ['a{1,2}+', /possessive/],
    ['(?x) a', /verbose/],
    ['(?L)a', /locale/],
    ['a(?i)b', /global flags not at the start/],
    ['[[:alpha:]]', /POSIX/],
    ['\\N{DIGIT ONE}', /\\N/],
    ['\\q', /bad escape \\q/],
    ['[\\A]', /bad escape \\A/],
    ['[\\W]', /inside a character set/],
    ['^*', /nothing to repeat/],
    ['\\b+', /nothing to repeat/],
    ['(?a:\\w)', /scoped ASCII/],
    ['\\x4', /exactly 2 hex digits/],
    ['\\U00110000', /beyond Unicode/],
    ['(?P<1x>a)', /bad group name/],
    ['(?<n>a)', /unknown extension/],
    ['a\\', /lone backslash/],
    ['[abc', /unterminated character set/],
    ['(abc', /linear-time engine/],
    ['*a', /linear-time engine/],
    ['a{1001}', /linear-time engine/],
  ])('refuses %s', (pattern, message) => {
    expect(() => compilePythonRegex([pattern], 'match')).toThrow(PythonRegexError)
    expect(() => compilePythonRegex([pattern], 'match')).toThrow(message)
  })

  it('refuses a pattern whose program is too large to match quickly', () => {
    const huge = Array.from({ length: 1000 }, (_, i) => `/dir${i}/[a-z]+`).join('|')
    expect(() => compilePythonRegex([huge], 'match')).toThrow(
      `more than the ${MAX_REGEX_PROGRAM_SIZE} allowed`,
    )
  })

  it('writes RE2 syntax', () => {
    expect(translatePythonRegex('(?P<d>/opt)\\Z')).toBe('(/opt)\\z')
    expect(translatePythonRegex('[]a]{,3}')).toBe('[\\]a]{0,3}')
    expect(translatePythonRegex('(?a)\\s\\x41')).toBe('[\\s\\v]\\x{41}')
    expect(translatePythonRegex('a$')).toBe('a(?:\\n?\\z)')
    expect(translatePythonRegex('a$', 'fullmatch')).toBe('a\\z')
  })
})
