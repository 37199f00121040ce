/**
 * Progress for long runs (`policy create runtime --rootfs` over a whole filesystem): nothing for the first two
 * seconds, then one status line on stderr, rewritten in place at most every half second. Off with `--quiet` and when
 * stderr is not a terminal (logs and pipes get only the result).
 */
export interface Progress {
  /** Reports the current state; cheap enough to call per item. */
  update(status: () => string): void
  /** Clears the status line. */
  done(): void
}

export interface ProgressOptions {
  quiet?: boolean
  stream?: Pick<NodeJS.WriteStream, 'write'> & { isTTY?: boolean }
  /** Quiet period before the first line, in ms (default 2000). */
  delayMs?: number
  now?: () => number
}

export function createProgress(label: string, options: ProgressOptions = {}): Progress {
  const stream = options.stream ?? process.stderr
  const now = options.now ?? Date.now
  if (options.quiet === true || stream.isTTY !== true) return { update() {}, done() {} }
  const started = now()
  const delay = options.delayMs ?? 2000
  let lastShown = 0
  let shown = false
  return {
    update(status) {
      const t = now()
      if (t - started < delay || t - lastShown < 500) return
      lastShown = t
      shown = true
      stream.write(`\r\x1b[2K${label}: ${status()} (${Math.round((t - started) / 1000)} s)`)
    },
    done() {
      if (shown) stream.write('\r\x1b[2K')
    },
  }
}
