/**
 * The evidence pool: worker threads give exactly the in-thread verdicts (quote, boot log + measured-boot policy, IMA
 * + runtime policy, failures of each), a policy reaches each worker once, a worker that dies fails only the
 * attestation it was running and is replaced, malformed input fails that job alone, and the queue stays bounded.
 */
import { createHash, generateKeyPairSync, sign } from 'node:crypto'
import { afterAll, describe, expect, it } from 'vitest'
import { SoftQuoter } from '../../../bench/fleet-quoter.ts'
import { formatImaSigEntry, imaSignatureField } from '../../../src/devtools/ima-writer.ts'
import { createSecureBootKeys, syntheticEventLog } from '../../../src/devtools/synthetic-event-log.ts'
import { computeKeyId, formatImaNgEntry, ImaKeyring } from '../../../src/evidence/ima/index.ts'
import { MEASUREDBOOT_PCRS as MB_PCRS } from '../../../src/evidence/mb/check.ts'
import { createReferenceState, parseEventLog, replayEventLog } from '../../../src/evidence/mb/index.ts'
import { type EvidenceInput, type EvidenceResult, evaluateEvidence } from '../../../src/evidence/pipeline.ts'
import { akKeyObject, parseTpmPolicy } from '../../../src/evidence/quote/index.ts'
import { failure } from '../../../src/evidence/verdict.ts'
import { EvidencePool, EvidenceWorkerError } from '../../../src/verifier/evidence-pool.ts'
import { CompiledPolicies } from '../../../src/verifier/policy-store.ts'

const pubkeyPem = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({
  type: 'spki',
  format: 'pem',
}) as string
const keys = await createSecureBootKeys()
const bootLog = syntheticEventLog({ keys }).bytes
const otherBootLog = syntheticEventLog({ keys, kernelRelease: '6.9.0-other' }).bytes
const policies = new CompiledPolicies('example')
const mbPolicy = policies.parseMbText(JSON.stringify(createReferenceState(parseEventLog(bootLog))))

const q = new SoftQuoter({ keyType: 'ecc' })
q.bindPubkey(pubkeyPem)
for (const [pcr, value] of replayEventLog(parseEventLog(bootLog)).get('sha256') ?? []) q.pcrs.set(pcr, value)
const lines: string[] = []
for (let i = 0; i < 300; i++) {
  const e = formatImaNgEntry(
    `/usr/bin/tool-${i}`,
    createHash('sha256').update(`tool ${i}`).digest(),
    'sha256',
  )
  lines.push(e.line)
  q.extendDigest(10, e.templateDigests.sha256)
}
const listText = `${lines.join('\n')}\n`
const allowed = (n: number) =>
  policies.compileRuntimeText(
    JSON.stringify({
      meta: { version: 1 },
      digests: Object.fromEntries(
        Array.from({ length: n }, (_, i) => [
          `/usr/bin/tool-${i}`,
          [createHash('sha256').update(`tool ${i}`).digest('hex')],
        ]),
      ),
    }),
  )
const fullPolicy = allowed(300)
const partialPolicy = allowed(200)

/** A fresh input each time: the pool transfers the boot log's buffer away. */
function input(
  over: Partial<EvidenceInput> = {},
  log: Buffer | null = bootLog,
  runtime = fullPolicy,
): EvidenceInput {
  const nonce = (over.nonce as string | undefined) ?? 'nonce-1'
  return {
    akPublic: akKeyObject(new Uint8Array(Buffer.from(q.akTpm, 'base64'))),
    quote: q.quote(nonce, [...MB_PCRS, 10, 16]),
    nonce,
    hashAlg: 'sha256',
    encAlg: 'ecc',
    signAlg: 'ecdsa',
    accepted: { hash: ['sha256'], encryption: ['ecc'], signing: ['ecdsa'] },
    tpmPolicy: parseTpmPolicy('{}'),
    boundPubkeyPem: pubkeyPem,
    previousClock: null,
    requiredPcrs: [...MB_PCRS, 10, 16],
    measuredBoot: {
      eventLog: log === null ? undefined : new Uint8Array(log),
      policy: mbPolicy,
      evaluatePolicy: true,
      missingLogEvent: failure('measured_boot.missing_event_log', 'none', true),
    },
    ima: {
      listText,
      firstEntry: 0,
      state: null,
      policy: runtime,
      ignoreTomtouErrors: true,
      missingListEvent: failure('pcr_validation.unused_pcr_10', 'none', true),
    },
    ...over,
  }
}

/** Results compared by value (a structured clone turns Buffers into Uint8Arrays). */
const plain = (r: EvidenceResult) =>
  JSON.parse(
    JSON.stringify(
      { ...r, pcrs: [...r.pcrs].map(([k, v]) => [k, Buffer.from(v).toString('hex')]) },
      (_k, v) => (v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v),
    ),
  )

const pools: EvidencePool[] = []
function pool(o: Partial<ConstructorParameters<typeof EvidencePool>[0]> = {}) {
  const p = new EvidencePool({ sourceOf: (x) => policies.sourceOf(x), ...o })
  pools.push(p)
  return p
}
afterAll(() => Promise.all(pools.map((p) => p.close())))

describe('evidence pool: same verdicts as the event loop', () => {
  const cases: [string, () => EvidenceInput][] = [
    ['passing quote, boot log and IMA list', () => input()],
    ['IMA entries outside the runtime policy', () => input({}, bootLog, partialPolicy)],
    ['boot log not matching the quoted PCRs', () => input({}, otherBootLog)],
    ['boot log missing', () => input({}, null)],
    ['nonce replayed', () => ({ ...input(), nonce: 'other' })],
    ['IMA only, no boot-log check', () => input({ measuredBoot: null })],
  ]

  const shared = pool({ workers: 2 })
  it.each(cases)('%s', async (_name, make) => {
    const p = shared
    const evidence = make()
    // the same evidence (one quote: the TPM clock moves with each), the boot log copied since the pool moves it
    const mb = evidence.measuredBoot
    const expected = evaluateEvidence({
      ...evidence,
      measuredBoot: mb && { ...mb, eventLog: mb.eventLog && new Uint8Array(mb.eventLog) },
    })
    const got = await p.run(evidence)
    expect(plain(got)).toEqual(plain(expected))
  })

  // the same cases with the IMA list cut into chunks that the second worker checks from the end
  const chunked = pool({ workers: 2, imaChunkChars: 2000 })
  it.each(cases)('%s, the list checked in chunks by both workers', async (_name, make) => {
    await chunked.run(input({ nonce: 'warm-up', measuredBoot: null })) // both workers loaded
    const evidence = make()
    const mb = evidence.measuredBoot
    const expected = evaluateEvidence({
      ...evidence,
      measuredBoot: mb && { ...mb, eventLog: mb.eventLog && new Uint8Array(mb.eventLog) },
    })
    expect(plain(await chunked.run(evidence))).toEqual(plain(expected))
  })
  it('the second worker did check chunks in those cases', async () => {
    // helpers read the list where the event loop wrote it, once per job: never a copy of their own
    expect(chunked.stats().imaListsShared).toBe(cases.length * 2)
    // one after the other, each list was written where the previous one had been
    expect(chunked.stats().imaListBuffersReused).toBe(cases.length * 2 - 1)
    // a list shorter than 64 KiB (~45 KB here) is cloned as text, as before
    expect(listText.length).toBeLessThan(64 * 1024)
    expect(shared.stats().imaListsShared).toBe(0)
    // How many chunks the second worker takes depends on timing: on a busy machine the job's own worker can reach
    // every chunk of so short a list first. Some more jobs give it the chance; never helping would be a bug.
    for (let n = 0; n < 50 && chunked.stats().imaChunksHelped === 0; n++)
      await chunked.run(input({ nonce: `again-${n}`, measuredBoot: null }))
    expect(chunked.stats().imaChunksHelped).toBeGreaterThan(0)
  })

  it('reads each list, not what an earlier one left in the reused buffer', async () => {
    const p = pool({ workers: 2, imaChunkChars: 2000 })
    const tampered = listText.replace('/usr/bin/tool-150\n', '/usr/bin/tool-151\n')
    const shorter = lines
      .slice(0, 260)
      .map((l) => `${l}\n`)
      .join('')
    const withList = (text: string, nonce: string) => {
      const i = input({ nonce, measuredBoot: null })
      return { ...i, ima: i.ima && { ...i.ima, listText: text } }
    }
    const verdicts: string[][] = []
    for (const [n, text] of [listText, tampered, shorter, listText].entries()) {
      const evidence = withList(text, `reuse-${n}`)
      const expected = evaluateEvidence(evidence)
      const got = await p.run(evidence)
      expect(plain(got)).toEqual(plain(expected))
      verdicts.push(got.verdict.ok ? [] : got.verdict.events.map((e) => e.eventId))
    }
    expect(verdicts).toEqual([[], ['ima.validation.ima_hash', 'ima.pcr_mismatch'], ['ima.pcr_mismatch'], []])
    expect(p.stats().imaListBuffersReused).toBe(3)
  })

  it('the failure cases really fail and the good one passes', () => {
    expect(evaluateEvidence(input()).verdict).toEqual({ ok: true })
    expect(evaluateEvidence(input({}, bootLog, partialPolicy)).verdict.ok).toBe(false)
    expect(evaluateEvidence(input({}, otherBootLog)).verdict.ok).toBe(false)
  })

  it('sends each policy to a worker once and keeps its bound on compiled policies', async () => {
    const p = pool({ workers: 1, maxPoliciesPerWorker: 1 })
    const runs = [fullPolicy, fullPolicy, partialPolicy, partialPolicy, fullPolicy].map((policy) =>
      p.run(input({ measuredBoot: null }, null, policy)),
    )
    const verdicts = (await Promise.all(runs)).map((r) => r.verdict.ok)
    expect(verdicts).toEqual([true, true, false, false, true])
    // full, then partial (full forgotten: bound 1), then full again
    expect(p.stats().policiesSent).toBe(3)
  })

  it('moves the boot log to the worker instead of copying it', async () => {
    const p = pool({ workers: 1 })
    const i = input()
    const log = i.measuredBoot?.eventLog as Uint8Array
    expect(log.byteLength).toBeGreaterThan(0)
    expect((await p.run(i)).verdict).toEqual({ ok: true })
    expect(log.byteLength).toBe(0)
  })
})

describe('evidence pool: failures stay with one attestation', () => {
  it('a job that throws fails alone, with the error the pipeline raised', async () => {
    const p = pool({ workers: 1 })
    const bad = { ...input(), accepted: null } as unknown as EvidenceInput
    const inThread = (() => {
      try {
        evaluateEvidence({ ...input(), accepted: null } as unknown as EvidenceInput)
      } catch (err) {
        return (err as Error).message
      }
    })()
    expect(inThread).toBeDefined()
    const [r1, r2] = await Promise.allSettled([p.run(bad), p.run(input())])
    expect(r1).toMatchObject({ status: 'rejected', reason: { message: inThread } })
    expect((r1 as PromiseRejectedResult).reason).toBeInstanceOf(EvidenceWorkerError)
    expect(r2).toMatchObject({ status: 'fulfilled', value: { verdict: { ok: true } } })
    expect(p.stats().workerDeaths).toBe(0)
  })

  it('a worker ended mid-evaluation fails that job only; the jobs behind it run on a new worker', async () => {
    // a long job: thousands of distinct ECDSA file signatures to check (each one costs about a millisecond)
    const signer = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    const keyId = computeKeyId(signer.publicKey)
    const keyring = new ImaKeyring()
    keyring.add(signer.publicKey, keyId)
    const sigQuoter = new SoftQuoter({ keyType: 'ecc' })
    const signed: string[] = []
    for (let i = 0; i < 3000; i++) {
      const content = Buffer.from(`signed file ${i}`)
      const digest = createHash('sha256').update(content).digest()
      const e = formatImaSigEntry(
        `/usr/lib/s-${i}`,
        digest,
        imaSignatureField(keyId, sign('sha256', content, signer.privateKey)),
      )
      signed.push(e.line)
      sigQuoter.extendDigest(10, e.templateDigests.sha256)
    }
    const long: EvidenceInput = {
      ...input({ measuredBoot: null }),
      akPublic: akKeyObject(new Uint8Array(Buffer.from(sigQuoter.akTpm, 'base64'))),
      quote: sigQuoter.quote('long', [10]),
      nonce: 'long',
      boundPubkeyPem: undefined,
      requiredPcrs: [10],
      ima: {
        listText: `${signed.join('\n')}\n`,
        firstEntry: 0,
        state: null,
        policy: null,
        verificationKeys: keyring,
        ignoreTomtouErrors: true,
        missingListEvent: failure('pcr_validation.unused_pcr_10', 'none', true),
      },
    }
    const died: string[] = []
    // far more than a quote-only evaluation takes, far less than 3,000 signature checks
    const p = pool({ workers: 1, depth: 4, jobTimeoutMs: 400, onWorkerDied: (reason) => died.push(reason) })
    const quoteOnly = (nonce: string) => ({ ...input({ nonce, measuredBoot: null }), ima: null })
    expect((await p.run(quoteOnly('warm'))).verdict).toEqual({ ok: true })
    const [stuck, a, b] = await Promise.allSettled([
      p.run(long),
      p.run(quoteOnly('a')),
      p.run(quoteOnly('b')),
    ])
    expect(stuck?.status).toBe('rejected')
    expect((stuck as PromiseRejectedResult).reason).toBeInstanceOf(EvidenceWorkerError)
    expect((stuck as PromiseRejectedResult).reason.message).toMatch(/longer than 400 ms/)
    expect(a).toMatchObject({ status: 'fulfilled', value: { verdict: { ok: true } } })
    expect(b).toMatchObject({ status: 'fulfilled', value: { verdict: { ok: true } } })
    expect(died).toHaveLength(1)
    expect(p.stats()).toMatchObject({ workerDeaths: 1, workers: 1 })
  }, 60_000)

  it('a closed pool rejects instead of evaluating', async () => {
    const p = pool({ workers: 1 })
    await p.close()
    await expect(p.run(input())).rejects.toBeInstanceOf(EvidenceWorkerError)
  })
})

describe('evidence pool: back-pressure', () => {
  it('hands each worker at most `depth` jobs and queues at most `maxQueued`; the rest wait for room', async () => {
    const p = pool({ workers: 2, depth: 2, maxQueued: 3 })
    let peakInFlight = 0
    let peakQueued = 0
    const sample = () => {
      const s = p.stats()
      peakInFlight = Math.max(peakInFlight, s.inFlight)
      peakQueued = Math.max(peakQueued, s.queued)
    }
    const runs = Array.from({ length: 24 }, (_, i) => {
      const r = p.run(input({ nonce: `n${i}`, measuredBoot: null }))
      sample()
      return r.finally(sample)
    })
    sample()
    expect(p.stats().queued).toBe(3)
    const out = await Promise.all(runs)
    expect(out.every((r) => r.verdict.ok)).toBe(true)
    expect(peakInFlight).toBe(4)
    expect(peakQueued).toBe(3)
    expect(p.stats()).toMatchObject({ inFlight: 0, queued: 0, workers: 2 })
  })
})
