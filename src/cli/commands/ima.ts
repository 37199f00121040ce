import { readFileSync } from 'node:fs'
import type { Command } from 'commander'
import type { CompiledRuntimePolicy, PcrBank } from '../../evidence/ima/index.ts'
import { CliError, EXIT, EXIT_STATUS_HELP, step } from '../errors.ts'

type Ima = typeof import('../../evidence/ima/index.ts')

interface ReplayOptions {
  bank: string
  policy?: string
  json?: boolean
  ignoreTomtou?: boolean
}

/** A failing entry of the list: 1-based line, file path, and why. */
interface EntryFailure {
  line: number
  path: string
  event_id: string
  message: string
}

function loadPolicy(ima: Ima, file: string): CompiledRuntimePolicy {
  const text = readFileSync(file, 'utf8')
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    throw new CliError(
      `${file}: not JSON (${(e as Error).message})`,
      EXIT.usage,
      'give a runtime policy JSON file',
    )
  }
  if (ima.isDsseEnvelope(json)) {
    // A local check only: the signature is the verifier's business (and `keylime policy verify runtime` checks it).
    process.stderr.write(
      'keylime ima replay: policy is a DSSE envelope; using its payload without checking the signature\n',
    )
    json = JSON.parse(Buffer.from(String(json.payload), 'base64').toString('utf8'))
  }
  try {
    return ima.compileRuntimePolicy(ima.parseRuntimePolicy(json, { strict: false }))
  } catch (e) {
    if (e instanceof ima.RuntimePolicyError || e instanceof ima.PolicySignatureError) {
      throw new CliError(`${file}: invalid runtime policy: ${e.message}`, EXIT.usage)
    }
    throw e
  }
}

const eventMessage = (context: Record<string, unknown>): string =>
  String(context.message ?? JSON.stringify(context))

/**
 * The failing lines of a list the whole-list check failed: each line is checked on its own, so a failure names its
 * line and path. A failure that depends on earlier lines (a key learned from an ima-buf entry) is reported from the
 * whole-list verdict instead, without a line.
 */
function failingLines(
  ima: Ima,
  lines: readonly string[],
  bank: PcrBank,
  policy: CompiledRuntimePolicy,
  ignoreTomtou: boolean,
): EntryFailure[] {
  const failures: EntryFailure[] = []
  lines.forEach((text, index) => {
    if (text === '') return
    const result = ima.verifyImaIncrement({
      listText: `${text}\n`,
      firstEntry: 0,
      state: null,
      quotedPcr10: { hashAlg: bank, value: null },
      policy,
      ignoreTomtouErrors: ignoreTomtou,
    })
    if (result.verdict.ok) return
    const path = (() => {
      try {
        return ima.parseImaLine(text).name
      } catch {
        return '?'
      }
    })()
    for (const e of result.verdict.events) {
      failures.push({ line: index + 1, path, event_id: e.eventId, message: eventMessage(e.context) })
    }
  })
  return failures
}

/** Whether bytes look like text a person wrote or the kernel's ASCII list (no NUL, mostly printable). */
function looksLikeText(bytes: Buffer): boolean {
  const head = bytes.subarray(0, 4096)
  if (head.includes(0)) return false
  let odd = 0
  for (const b of head) if (b < 0x09 || (b > 0x0d && b < 0x20) || b === 0x7f) odd++
  return odd * 20 < head.length
}

async function replay(file: string, opts: ReplayOptions): Promise<void> {
  const ima = await import('../../evidence/ima/index.ts')
  const banks = opts.bank.split(',').map((b) => b.trim())
  const badBank = banks.find((b) => !ima.isPcrBank(b))
  if (badBank !== undefined) {
    throw new CliError(
      `unknown bank ${JSON.stringify(badBank)}`,
      EXIT.usage,
      'use sha1, sha256, sha384, sha512 or sm3_256',
    )
  }
  const bytes = await step(`reading ${file}`, () => readFileSync(file))
  let parsed: ReturnType<typeof ima.parseImaList>
  try {
    parsed = ima.parseImaList(bytes)
  } catch (e) {
    if (!(e instanceof ima.ImaParseError)) throw e
    if (!looksLikeText(bytes) && e.line !== undefined) {
      throw new CliError(
        `${file}: neither an ASCII nor a binary IMA measurement list`,
        EXIT.usage,
        'give ascii_runtime_measurements or binary_runtime_measurements',
      )
    }
    throw new CliError(`${file}: malformed IMA list: ${e.message}`, EXIT.usage)
  }
  if (parsed.remainder) {
    process.stderr.write(
      `keylime ima replay: ${file}: ${parsed.remainder.length} trailing byte(s) at offset ${parsed.remainder.offset} ignored (${parsed.remainder.reason})\n`,
    )
  }
  const pcrs: Record<string, Record<string, string>> = {}
  for (const bank of banks as PcrBank[])
    pcrs[bank] = { '10': ima.replayImaEntries(parsed.entries, bank).toString('hex') }

  let failures: EntryFailure[] = []
  if (opts.policy !== undefined) {
    const policyFile = opts.policy
    const policy = await step(`reading the runtime policy ${policyFile}`, () => loadPolicy(ima, policyFile))
    const lines =
      parsed.format === 'ascii' ? bytes.toString('utf8').split('\n') : parsed.entries.map(ima.formatImaLine)
    const bank = banks[0] as PcrBank
    const ignoreTomtou = opts.ignoreTomtou !== false
    const result = ima.verifyImaIncrement({
      listText: `${lines.join('\n')}\n`,
      firstEntry: 0,
      state: null,
      quotedPcr10: { hashAlg: bank, value: null },
      policy,
      ignoreTomtouErrors: ignoreTomtou,
    })
    if (!result.verdict.ok) {
      failures = failingLines(ima, lines, bank, policy, ignoreTomtou)
      const located = new Set(failures.map((f) => f.event_id))
      for (const e of result.verdict.events) {
        if (!located.has(e.eventId)) {
          failures.push({ line: 0, path: '?', event_id: e.eventId, message: eventMessage(e.context) })
        }
      }
    }
  }

  if (opts.json) {
    process.stdout.write(`${JSON.stringify({ entries: parsed.entries.length, pcrs, failures })}\n`)
  } else {
    const out = [`format: ${parsed.format}`, `entries: ${parsed.entries.length}`]
    for (const [bank, v] of Object.entries(pcrs)) out.push(`PCR 10 ${bank}: ${v['10']}`)
    if (opts.policy !== undefined) {
      out.push(failures.length === 0 ? 'policy: pass' : `policy: FAIL (${failures.length} failure(s))`)
      for (const f of failures) {
        const where = f.line === 0 ? '' : `${file}:${f.line}: ${f.path}: `
        out.push(`  ${where}${f.event_id}: ${f.message}`)
      }
    }
    process.stdout.write(`${out.join('\n')}\n`)
  }
  if (failures.length > 0) process.exitCode = EXIT.failed
}

export function registerImaCommands(program: Command): void {
  const ima = program.command('ima').description('IMA measurement list tools')
  ima
    .command('replay')
    .description(
      'Parse an IMA measurement list (ASCII or binary), print PCR 10 per bank and check it against a runtime policy',
    )
    .argument('<list>', 'ascii_runtime_measurements or binary_runtime_measurements file')
    .option('--bank <banks>', 'comma-separated PCR banks to replay', 'sha1,sha256')
    .option('--policy <file>', 'runtime policy JSON to check every entry against')
    .option('--no-ignore-tomtou', 'report ToMToU/open-writers violations as failures')
    .option('--json', 'print {"entries": N, "pcrs": {bank: {"10": hex}}, "failures": [...]}')
    .addHelpText('after', `\n${EXIT_STATUS_HELP}`)
    .action((file: string, opts: ReplayOptions) => replay(file, opts))
}
