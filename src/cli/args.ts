/** Argument parsers for commander: a bad value is a usage error (status 2) that names the value. */
import { InvalidArgumentError } from 'commander'

/** A TCP port, 1-65535. */
export function port(value: string): number {
  const n = Number(value)
  if (!/^\d+$/.test(value.trim()) || n < 1 || n > 65535) {
    throw new InvalidArgumentError(`${JSON.stringify(value)} is not a port (1-65535)`)
  }
  return n
}

/** An integer greater than zero. */
export function positiveInt(value: string): number {
  const n = Number(value)
  if (!/^\d+$/.test(value.trim()) || n < 1) {
    throw new InvalidArgumentError(`${JSON.stringify(value)} is not a whole number greater than 0`)
  }
  return n
}

/** A number of seconds greater than zero (fractions allowed). */
export function seconds(value: string): number {
  const n = Number(value)
  if (value.trim() === '' || !Number.isFinite(n) || n <= 0) {
    throw new InvalidArgumentError(`${JSON.stringify(value)} is not a number of seconds greater than 0`)
  }
  return n
}
