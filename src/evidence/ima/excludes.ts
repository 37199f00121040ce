/**
 * Runtime-policy `excludes` are Python `re` patterns applied with `re.match` (anchored at the start only). They run
 * on the linear-time engine of `../python-regex.ts`, joined into one program compiled once per policy.
 */
import { compilePythonRegex, type LinearRegex } from '../python-regex.ts'

/** Tests paths against a compiled exclude list with Python `re.match` semantics. */
export type ExcludeMatcher = LinearRegex

/** Compiles excludes into one anchored alternation; null for an empty list. Throws `PythonRegexError`. */
export function compileExcludes(patterns: readonly string[]): ExcludeMatcher | null {
  return patterns.length === 0 ? null : compilePythonRegex(patterns, 'match')
}
