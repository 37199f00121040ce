import { readFileSync } from 'node:fs'
import type { Command } from 'commander'
import {
  compileRuntimePolicy,
  formatImaLine,
  ImaParseError,
  isDsseEnvelope,
  isPcrBank,
  type PcrBank,
  PolicySignatureError,
  parseImaList,
  parseRuntimePolicy,
  RuntimePolicyError,
  replayImaEntries,
  verifyImaIncrement,
} from '../../evidence/ima/index.ts'

interface ReplayOptions {
  bank: string
  policy?: string
  json?: boolean
  ignoreTomtou?: boolean
}

function fail(message: string, code: number): undefined {
  process.stderr.write(`keylime ima replay: ${message}\n`)
  process.exitCode = code
}

function loadPolicy(file: string) {
  let json: unknown = JSON.parse(readFileSync(file, 'utf8'))
  if (isDsseEnvelope(json)) {
    // A local check only: the signature is the verifier's business (and `keylime policy` verifies envelopes).
    process.stderr.write(
      'keylime ima replay: policy is a DSSE envelope; using its payload without checking the signature\n',
    )
    json = JSON.parse(Buffer.from(String(json.payload), 'base64').toString('utf8'))
  }
  return compileRuntimePolicy(parseRuntimePolicy(json, { strict: false }))
}

function replay(file: string, opts: ReplayOptions): undefined {
  const banks = opts.bank.split(',').map((b) => b.trim())
  const badBank = banks.find((b) => !isPcrBank(b))
  if (badBank !== undefined)
    return fail(`unknown bank ${JSON.stringify(badBank)} (sha1, sha256, sha384, sha512, sm3_256)`, 2)
  let bytes: Buffer
  try {
    bytes = readFileSync(file)
  } catch (e) {
    return fail(`cannot read ${file}: ${(e as Error).message}`, 2)
  }
  let parsed: ReturnType<typeof parseImaList>
  try {
    parsed = parseImaList(bytes)
  } catch (e) {
    if (e instanceof ImaParseError) return fail(`${file}: malformed IMA list: ${e.message}`, 2)
    throw e
  }
  if (parsed.remainder) {
    process.stderr.write(
      `keylime ima replay: ${file}: ${parsed.remainder.length} trailing byte(s) at offset ${parsed.remainder.offset} ignored (${parsed.remainder.reason})\n`,
    )
  }
  const pcrs: Record<string, Record<string, string>> = {}
  for (const bank of banks as PcrBank[])
    pcrs[bank] = { '10': replayImaEntries(parsed.entries, bank).toString('hex') }

  let failures: { event_id: string; context: Record<string, unknown>; recoverable: boolean }[] = []
  if (opts.policy !== undefined) {
    let policy: ReturnType<typeof compileRuntimePolicy>
    try {
      policy = loadPolicy(opts.policy)
    } catch (e) {
      if (e instanceof RuntimePolicyError || e instanceof PolicySignatureError || e instanceof SyntaxError) {
        return fail(`${opts.policy}: invalid runtime policy: ${e.message}`, 2)
      }
      if ((e as NodeJS.ErrnoException).code !== undefined)
        return fail(`cannot read ${opts.policy}: ${(e as Error).message}`, 2)
      throw e
    }
    const listText =
      parsed.format === 'ascii' ? bytes.toString('utf8') : parsed.entries.map(formatImaLine).join('\n')
    const result = verifyImaIncrement({
      listText,
      firstEntry: 0,
      state: null,
      quotedPcr10: { hashAlg: banks[0] as PcrBank, value: null },
      policy,
      ignoreTomtouErrors: opts.ignoreTomtou !== false,
    })
    if (!result.verdict.ok) {
      failures = result.verdict.events.map((e) => ({
        event_id: e.eventId,
        context: e.context,
        recoverable: e.recoverable,
      }))
    }
  }

  if (opts.json) {
    process.stdout.write(`${JSON.stringify({ entries: parsed.entries.length, pcrs, failures })}\n`)
  } else {
    const out = [`format: ${parsed.format}`, `entries: ${parsed.entries.length}`]
    for (const [bank, v] of Object.entries(pcrs)) out.push(`PCR 10 ${bank}: ${v['10']}`)
    if (opts.policy !== undefined) {
      out.push(failures.length === 0 ? 'policy: pass' : `policy: FAIL (${failures.length} failure(s))`)
      for (const f of failures)
        out.push(`  ${f.event_id}: ${String(f.context.message ?? JSON.stringify(f.context))}`)
    }
    process.stdout.write(`${out.join('\n')}\n`)
  }
  if (failures.length > 0) process.exitCode = 1
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
    .addHelpText(
      'after',
      '\nExit status: 0 parsed (and passed the policy), 1 policy failure, 2 malformed list or bad input.',
    )
    .action((file: string, opts: ReplayOptions) => replay(file, opts))
}
