/**
 * IMA emulator for machines without kernel IMA (issue #3): measures files, appends real ima-ng lines to a list file
 * and extends PCR 10 with the matching template digests, so a verifier's real replay path is exercised. The first
 * entry of an empty list is `boot_aggregate` = H(PCR0 ‖ … ‖ PCR9) of the chosen bank, as recent kernels compute it.
 */
import { createHash } from 'node:crypto'
import { appendFileSync, existsSync, type FSWatcher, readFileSync, statSync, watch } from 'node:fs'
import { resolve } from 'node:path'
import type { Logger } from '../common/log.ts'
import { formatImaNgEntry } from '../evidence/ima/entry.ts'
import type { AgentTpm, HashAlgName, TpmLock } from './agent-tpm.ts'

/** `formatImaNgEntry` as the emulator needs it: the ASCII line (with newline) and the digest to extend per bank. */
export type ImaNgFormatter = (
  path: string,
  fileDigest: Uint8Array,
  hashAlg: HashAlgName,
) => { line: string; pcrDigests: Partial<Record<HashAlgName, Uint8Array>> }

export interface ImaEmulatorOptions {
  tpm: AgentTpm
  lock: TpmLock
  listPath: string
  /** File digest algorithm (and boot_aggregate bank). */
  hashAlg: HashAlgName
  format: ImaNgFormatter
}

export const IMA_PCR = 10

export class ImaEmulator {
  private readonly o: ImaEmulatorOptions

  constructor(o: ImaEmulatorOptions) {
    this.o = o
  }

  private listIsEmpty(): boolean {
    return !existsSync(this.o.listPath) || statSync(this.o.listPath).size === 0
  }

  /** Appends one entry and extends PCR 10 (one lock hold, so quotes see list and PCR agree). */
  private async append(name: string, fileDigest: Uint8Array): Promise<string> {
    const { line, pcrDigests } = this.o.format(name, fileDigest, this.o.hashAlg)
    await this.o.tpm.pcrExtend(IMA_PCR, pcrDigests)
    appendFileSync(this.o.listPath, line.endsWith('\n') ? line : `${line}\n`, { mode: 0o644 })
    return line
  }

  async ensureBootAggregate(): Promise<string | null> {
    return this.o.lock.run(async () => {
      if (!this.listIsEmpty()) return null
      const pcrs = await this.o.tpm.pcrRead(this.o.hashAlg, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
      const h = createHash(this.o.hashAlg)
      for (let i = 0; i <= 9; i++) {
        const v = pcrs.get(i)
        if (!v) throw new Error(`PCR ${i} missing from the ${this.o.hashAlg} bank`)
        h.update(v)
      }
      return this.append('boot_aggregate', h.digest())
    })
  }

  /** Measures files (absolute paths are recorded), appending one entry each; returns every line appended. */
  async measure(paths: string[]): Promise<string[]> {
    const boot = await this.ensureBootAggregate()
    const lines: string[] = boot ? [boot] : []
    for (const p of paths) {
      const abs = resolve(p)
      const digest = createHash(this.o.hashAlg).update(readFileSync(abs)).digest()
      lines.push(await this.o.lock.run(() => this.append(abs, digest)))
    }
    return lines
  }
}

/** ima-ng lines for the emulator, with the template digest of each bank a TPM extends. */
export const imaNgFormatter: ImaNgFormatter = (path, fileDigest, hashAlg) => {
  const f = formatImaNgEntry(path, fileDigest, hashAlg)
  const banks: HashAlgName[] = ['sha1', 'sha256', 'sha384', 'sha512']
  const pcrDigests: Partial<Record<HashAlgName, Uint8Array>> = {}
  for (const b of banks) pcrDigests[b] = f.templateDigests[b]
  return { line: `${f.line}\n`, pcrDigests }
}

/** `ima_emulator_paths`: comma-separated, blanks dropped. */
export function imaEmulatorPaths(setting: string): string[] {
  return setting
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean)
}

/**
 * Runs the in-process IMA emulator on `paths` (it shares the agent's TPM connection: swtpm serves one client at a
 * time); returns the function that stops it.
 */
export async function startImaEmulator(
  o: ImaEmulatorOptions,
  paths: string[],
  log: Logger,
): Promise<() => void> {
  const stop = await measureAndWatch(new ImaEmulator(o), paths, log)
  log.info(`IMA emulator measured ${paths.length} file(s) into ${o.listPath}`)
  return stop
}

/**
 * Measures `paths` now, then re-measures a file each time it changes (debounced); returns the function that stops
 * watching. Used by agents with `ima_emulator_paths`.
 */
export async function measureAndWatch(
  emulator: ImaEmulator,
  paths: string[],
  log: Logger,
): Promise<() => void> {
  await emulator.measure(paths)
  const timers = new Map<string, NodeJS.Timeout>()
  const watchers: FSWatcher[] = paths.map((p) =>
    watch(p, () => {
      clearTimeout(timers.get(p))
      timers.set(
        p,
        setTimeout(() => {
          emulator.measure([p]).then(
            () => log.info(`IMA emulator re-measured ${p}`),
            (err: unknown) => log.warn(`IMA emulator cannot measure ${p}: ${(err as Error).message}`),
          )
        }, 100),
      )
    }),
  )
  return () => {
    for (const w of watchers) w.close()
    for (const t of timers.values()) clearTimeout(t)
  }
}
