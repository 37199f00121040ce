import {
  constants,
  createCipheriv,
  createHmac,
  generateKeyPairSync,
  type KeyObject,
  publicEncrypt,
  randomBytes,
  sign,
} from 'node:crypto'
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as x509 from '@peculiar/x509'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import yauzl from 'yauzl'
import yazl from 'yazl'
import { PayloadManager, PayloadRefusedError, PayloadRequestError } from '../../../src/agent/payload.ts'
import { ACTION_PATH, parseEventTime, RevocationHandler } from '../../../src/agent/revocation.ts'
import { createLogger } from '../../../src/common/log.ts'
import { asctime } from '../../../src/crypto/revocation.ts'

const log = createLogger('agent-test', 'silent')
const UUID = 'd432fbb3-d2f1-4a97-9ef7-75bd81c00000'

// Written from the spec (§E.1), independently of the agent's code path.
const oaep = (pub: KeyObject, data: Buffer) =>
  publicEncrypt({ key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, data).toString(
    'base64',
  )
function encryptBlob(k: Buffer, plain: Buffer): string {
  const iv = randomBytes(16)
  const c = createCipheriv('aes-256-gcm', k, iv)
  return Buffer.concat([iv, c.update(plain), c.final(), c.getAuthTag()]).toString('base64')
}
function zip(files: Record<string, string>): Promise<Buffer> {
  return new Promise((done, fail) => {
    const z = new yazl.ZipFile()
    for (const [name, text] of Object.entries(files)) z.addBuffer(Buffer.from(text), name, { mode: 0o100644 })
    z.end()
    const chunks: Buffer[] = []
    z.outputStream.on('data', (c: Buffer) => chunks.push(c))
    z.outputStream.on('end', () => done(Buffer.concat(chunks)))
    z.outputStream.on('error', fail)
  })
}
// Minimal extractor for the test (plain names only); production wiring uses the payload module's safe extractor.
function testExtract(data: Uint8Array, dest: string): Promise<void> {
  return new Promise((done, fail) => {
    yauzl.fromBuffer(Buffer.from(data), { lazyEntries: true }, (err, zf) => {
      if (err || !zf) return fail(err)
      zf.on('entry', (e: yauzl.Entry) => {
        if (e.fileName.includes('/')) return fail(new Error('nested'))
        zf.openReadStream(e, (err2, rs) => {
          if (err2 || !rs) return fail(err2)
          const cs: Buffer[] = []
          rs.on('data', (c: Buffer) => cs.push(c))
          rs.on('end', () => {
            writeFileSync(join(dest, e.fileName), Buffer.concat(cs))
            zf.readEntry()
          })
        })
      })
      zf.on('end', () => done())
      zf.readEntry()
    })
  })
}

let dir: string
let keys: { publicKey: KeyObject; privateKey: KeyObject }
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'agent-payload-'))
  keys ??= generateKeyPairSync('rsa', { modulusLength: 2048 })
})
afterEach(() => rmSync(dir, { recursive: true, force: true }))

function manager(runPayloads = true) {
  return new PayloadManager({
    uuid: UUID,
    payloadKey: keys.privateKey,
    secureDir: join(dir, 'secure'),
    encKeyname: 'derived_tci_key',
    decPayloadFile: 'decrypted_payload',
    extractPayloadZip: true,
    payloadScript: 'autorun.sh',
    scriptTimeoutMs: 5_000,
    runPayloads,
    extractZip: testExtract,
    log,
  })
}

function split() {
  const k = randomBytes(32)
  const v = randomBytes(32)
  const u = Buffer.from(k.map((b, i) => b ^ (v[i] as number)))
  const authTag = createHmac('sha384', k).update(UUID).digest('hex')
  return { k, u, v, authTag }
}

describe('PayloadManager', () => {
  it('combines U and V in either order, runs autorun.sh in a 0700 dir, and answers /keys/verify', async () => {
    const { k, u, v, authTag } = split()
    const payload = encryptBlob(
      k,
      await zip({ 'autorun.sh': 'echo ran > marker.txt\n', 'data.txt': 'hello' }),
    )
    const m = manager()
    expect(m.verify('abc')).toBeNull()
    // a wrong V first must not combine
    m.addV({ encrypted_key: oaep(keys.publicKey, randomBytes(32)) })
    expect(m.verify('abc')).toBeNull()
    m.addU({ encrypted_key: oaep(keys.publicKey, u), auth_tag: authTag, payload })
    expect(m.verify('abc')).toBeNull()
    m.addV({ encrypted_key: oaep(keys.publicKey, v) })
    expect(m.verify('abc')).toBeNull() // K derived, payload still being installed
    await m.whenIdle()
    expect(m.verify('abc')).toBe(createHmac('sha384', k).update('abc').digest('hex'))
    expect(m.lastResult?.ok).toBe(true)
    const unz = join(dir, 'secure', 'unzipped')
    expect(statSync(unz).mode & 0o777).toBe(0o700)
    expect(readFileSync(join(unz, 'marker.txt'), 'utf8')).toBe('ran\n')
    expect(readFileSync(join(unz, 'data.txt'), 'utf8')).toBe('hello')
    expect(readFileSync(join(unz, 'derived_tci_key')).equals(k)).toBe(true)
  })

  it('derives K but runs nothing when payloads are not allowed', async () => {
    const { k, u, v, authTag } = split()
    const m = manager(false)
    m.addV({ encrypted_key: oaep(keys.publicKey, v) })
    m.addU({
      encrypted_key: oaep(keys.publicKey, u),
      auth_tag: authTag,
      payload: encryptBlob(k, Buffer.from('x')),
    })
    await m.whenIdle()
    expect(() => m.verify('z')).toThrow(
      'payload refused: not run: mTLS is disabled and enable_insecure_payload is false',
    )
    expect(existsSync(join(dir, 'secure', 'unzipped'))).toBe(false)
  })

  it('rejects malformed requests with 400-class typed errors', () => {
    const m = manager()
    const { u } = split()
    const good = oaep(keys.publicKey, u)
    const cases: [Record<string, string>, RegExp][] = [
      [{ encrypted_key: '!!!', auth_tag: 'a'.repeat(96) }, /base64/],
      [{ encrypted_key: Buffer.from('nope').toString('base64'), auth_tag: 'a'.repeat(96) }, /decrypted/],
      [{ encrypted_key: oaep(keys.publicKey, randomBytes(20)), auth_tag: 'a'.repeat(96) }, /16 or 32/],
      [{ encrypted_key: good, auth_tag: 'zz'.repeat(48) }, /hex/],
      [{ encrypted_key: good, auth_tag: 'ab'.repeat(20) }, /48 bytes/],
    ]
    for (const [body, re] of cases) {
      let err: unknown
      try {
        m.addU(body as { encrypted_key: string; auth_tag: string })
      } catch (e) {
        err = e
      }
      expect(err).toBeInstanceOf(PayloadRequestError)
      expect((err as PayloadRequestError).statusCode).toBe(400)
      expect((err as Error).message).toMatch(re)
    }
  })

  it('reports a payload that fails authentication without running anything', async () => {
    const { u, v, authTag } = split()
    const m = manager()
    m.addU({
      encrypted_key: oaep(keys.publicKey, u),
      auth_tag: authTag,
      payload: encryptBlob(randomBytes(32), Buffer.from('x')),
    })
    m.addV({ encrypted_key: oaep(keys.publicKey, v) })
    await m.whenIdle()
    expect(m.lastResult).toMatchObject({ ok: false })
    expect(m.lastResult?.message).toMatch(/authentication failed/)
    // /keys/verify tells the tenant why (a 422 through the agent's error handler) instead of the HMAC.
    const refused = (() => {
      try {
        m.verify('abc')
      } catch (err) {
        return err as PayloadRefusedError
      }
    })()
    expect(refused).toBeInstanceOf(PayloadRefusedError)
    expect(refused?.statusCode).toBe(422)
    expect(refused?.message).toMatch(/^payload refused: .*authentication failed/)

    // The next provisioning starts from a new U: nothing is answered for the old K until the new one is derived.
    const next = split()
    m.addU({
      encrypted_key: oaep(keys.publicKey, next.u),
      auth_tag: next.authTag,
      payload: encryptBlob(next.k, await zip({ 'data.txt': 'again' })),
    })
    expect(m.verify('abc')).toBeNull()
    m.addV({ encrypted_key: oaep(keys.publicKey, next.v) })
    await m.whenIdle()
    expect(m.verify('abc')).toBe(createHmac('sha384', next.k).update('abc').digest('hex'))
  })
})

describe('RevocationHandler', () => {
  x509.cryptoProvider.set(globalThis.crypto)
  async function revocationCert(dirPath: string) {
    const alg = {
      name: 'RSASSA-PKCS1-v1_5',
      hash: 'SHA-256',
      publicExponent: new Uint8Array([1, 0, 1]),
      modulusLength: 2048,
    }
    const kp = (await globalThis.crypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as {
      privateKey: import('node:crypto').webcrypto.CryptoKey
      publicKey: import('node:crypto').webcrypto.CryptoKey
    }
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: '01',
      name: 'CN=RevocationNotifier',
      keys: kp,
      signingAlgorithm: alg,
    })
    writeFileSync(join(dirPath, 'RevocationNotifier-cert.crt'), cert.toString('pem'))
    const pkcs8 = Buffer.from(await globalThis.crypto.subtle.exportKey('pkcs8', kp.privateKey))
    return (await import('node:crypto')).createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' })
  }
  const signMsg = (key: KeyObject, msg: string) =>
    sign('sha256', Buffer.from(msg), {
      key,
      padding: constants.RSA_PKCS1_PSS_PADDING,
      saltLength: constants.RSA_PSS_SALTLEN_MAX_SIGN,
    }).toString('base64')

  it('drops before the cert, rejects forgeries, runs actions in order and stops at the first failure', async () => {
    const unz = join(dir, 'unzipped')
    const actionsDir = join(dir, 'actions')
    mkdirSync(unz, { recursive: true })
    mkdirSync(actionsDir)
    const out = join(dir, 'out.txt')
    const script = (body: string) => `#!/bin/sh\n${body}\n`
    writeFileSync(join(actionsDir, 'local_a'), script(`echo "a $(cat "$1" | head -c 40)" >> ${out}`))
    writeFileSync(join(unz, 'payload_b'), script(`echo b >> ${out}; exit 3`))
    writeFileSync(join(unz, 'payload_c'), script(`echo c >> ${out}`))
    for (const f of [join(actionsDir, 'local_a'), join(unz, 'payload_b'), join(unz, 'payload_c')])
      chmodSync(f, 0o700)
    writeFileSync(join(unz, 'action_list'), 'payload_b,payload_c\n')
    const h = new RevocationHandler({
      certPath: join(unz, 'RevocationNotifier-cert.crt'),
      actions: 'local_a',
      actionsDir,
      allowPayloadActions: true,
      unzippedDir: unz,
      workDir: dir,
      agentUuid: 'agent-under-test',
      timeoutMs: 5_000,
      maxAgeMs: 3_600_000,
      seenPath: join(dir, 'revocations_seen.json'),
      log,
    })
    const msg = JSON.stringify({
      type: 'revocation',
      agent_id: 'other',
      ip: '127.0.0.1',
      event_time: asctime(new Date()),
    })
    expect(await h.receive({ msg, signature: 'AAAA' })).toMatchObject({ status: 'dropped' })
    const key = await revocationCert(unz)
    expect(h.loadCertificate()).toBe(true)
    const other = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey
    expect(await h.receive({ msg, signature: signMsg(other, msg) })).toMatchObject({ status: 'rejected' })
    expect(await h.receive({ msg, signature: '' })).toMatchObject({ status: 'rejected' })
    expect(await h.receive({ msg: `${msg} `, signature: signMsg(key, msg) })).toMatchObject({
      status: 'rejected',
    })
    expect(existsSync(out)).toBe(false)
    expect(await h.receive({ msg, signature: signMsg(key, msg) })).toEqual({
      status: 'done',
      ran: ['local_a'],
      failed: 'payload_b',
    })
    expect(readFileSync(out, 'utf8')).toBe(`a ${msg.slice(0, 40)}\nb\n`)
  })

  it('runs actions in the documented environment; one that hangs is stopped and the next revocation still runs', async () => {
    const unz = join(dir, 'unzipped')
    const actionsDir = join(dir, 'actions')
    mkdirSync(unz, { recursive: true })
    mkdirSync(actionsDir)
    const envOut = join(dir, 'env.txt')
    const hang = join(dir, 'hang-once')
    writeFileSync(
      join(actionsDir, 'record'),
      `#!/bin/sh\n{ pwd; echo "$1"; cat "$1"; echo; env | sort; } > ${envOut}\n`,
    )
    // hangs on the first revocation only (the marker file exists then)
    writeFileSync(join(actionsDir, 'stuck'), `#!/bin/sh\nif [ -e ${hang} ]; then rm ${hang}; sleep 600; fi\n`)
    for (const f of ['record', 'stuck']) chmodSync(join(actionsDir, f), 0o700)
    writeFileSync(hang, '')
    process.env.KEYLIME_TEST_AGENT_SECRET = 'not-for-actions'
    const h = new RevocationHandler({
      certPath: join(unz, 'RevocationNotifier-cert.crt'),
      actions: 'stuck,record',
      actionsDir,
      allowPayloadActions: false,
      unzippedDir: unz,
      workDir: dir,
      agentUuid: UUID,
      timeoutMs: 500,
      maxAgeMs: 3_600_000,
      seenPath: join(dir, 'revocations_seen.json'),
      log,
    })
    try {
      const key = await revocationCert(unz)
      h.loadCertificate()
      const message = (id: string) => {
        const msg = JSON.stringify({ type: 'revocation', agent_id: id, event_time: asctime(new Date()) })
        return { msg, signature: signMsg(key, msg) }
      }
      const first = message('first')
      const second = message('second')
      const t = performance.now()
      const [a, b] = await Promise.all([h.receive(first), h.receive(second)])
      expect(performance.now() - t).toBeLessThan(10_000)
      expect(a).toEqual({ status: 'done', ran: [], failed: 'stuck' })
      expect(b).toEqual({ status: 'done', ran: ['stuck', 'record'] })
      const [cwd, msgPath, msgText, ...env] = readFileSync(envOut, 'utf8').trim().split('\n')
      expect(cwd).toBe(dir)
      expect(msgText).toBe(second.msg)
      expect(env.filter((l) => !/^(PWD|SHLVL|_)=/.test(l))).toEqual([
        `HOME=${dir}`,
        `KEYLIME_AGENT_UUID=${UUID}`,
        `KEYLIME_DIR=${dir}`,
        `KEYLIME_PAYLOAD_DIR=${unz}`,
        `KEYLIME_REVOCATION_MESSAGE=${msgPath}`,
        'LANG=C.UTF-8',
        `PATH=${ACTION_PATH}`,
      ])
      // the message file is removed once the actions ran
      expect(existsSync(msgPath as string)).toBe(false)
    } finally {
      delete process.env.KEYLIME_TEST_AGENT_SECRET
    }
  })

  describe('replays', () => {
    const HOUR = 3_600_000
    let clock = Date.UTC(2026, 11, 6, 12, 0, 0)
    let key: KeyObject
    let unz: string
    const out = () => join(dir, 'ran.txt')

    async function setUp() {
      unz = join(dir, 'unzipped')
      mkdirSync(join(dir, 'actions'), { recursive: true })
      mkdirSync(unz, { recursive: true })
      writeFileSync(join(dir, 'actions', 'count'), `#!/bin/sh\necho ran >> ${out()}\n`)
      chmodSync(join(dir, 'actions', 'count'), 0o700)
      key = await revocationCert(unz)
    }
    /** A new handler on the same work directory: what an agent restart builds. */
    function handler() {
      const h = new RevocationHandler({
        certPath: join(unz, 'RevocationNotifier-cert.crt'),
        actions: 'count',
        actionsDir: join(dir, 'actions'),
        allowPayloadActions: false,
        unzippedDir: unz,
        workDir: dir,
        agentUuid: 'agent-under-test',
        timeoutMs: 5_000,
        maxAgeMs: HOUR,
        seenPath: join(dir, 'revocations_seen.json'),
        log,
        now: () => clock,
      })
      h.loadCertificate()
      return h
    }
    const signed = (eventTime: number | string, agentId = 'bad-agent') => {
      const msg = JSON.stringify({
        type: 'revocation',
        agent_id: agentId,
        ip: '127.0.0.9',
        event_time: typeof eventTime === 'string' ? eventTime : asctime(new Date(eventTime)),
      })
      return { msg, signature: signMsg(key, msg) }
    }
    const runs = () =>
      existsSync(out()) ? readFileSync(out(), 'utf8').split('\n').filter(Boolean).length : 0

    it('acts on a captured revocation once, also after a restart', async () => {
      await setUp()
      const captured = signed(clock - 60_000)
      const first = handler()
      expect(await first.receive(captured)).toEqual({ status: 'done', ran: ['count'] })
      expect(await first.receive(captured)).toEqual({
        status: 'ignored',
        reason: 'already acted on (replayed)',
      })
      const restarted = handler()
      expect(restarted.seenCount).toBe(1)
      expect(await restarted.receive(captured)).toMatchObject({ status: 'ignored' })
      expect(runs()).toBe(1)
      // Another event, even for the same agent within the same second, is a different message.
      expect(await restarted.receive(signed(clock - 60_000, 'other-agent'))).toMatchObject({ status: 'done' })
      expect(runs()).toBe(2)
    })

    it('ignores revocations outside the age window and forgets entries once they leave it', async () => {
      await setUp()
      const h = handler()
      expect(await h.receive(signed(clock - HOUR - 1000))).toEqual({
        status: 'ignored',
        reason: expect.stringMatching(/older than revocation_max_age_seconds \(3600\)/),
      })
      expect(await h.receive(signed(clock + HOUR + 1000))).toEqual({
        status: 'ignored',
        reason: expect.stringMatching(/later than now/),
      })
      expect(await h.receive(signed(clock - HOUR + 5000))).toMatchObject({ status: 'done' })
      expect(runs()).toBe(1)
      clock += 10_000
      expect(handler().seenCount).toBe(0)
    })

    it('rejects a signed message without a readable event_time', async () => {
      await setUp()
      const h = handler()
      for (const bad of ['yesterday', 'Tue Feb 31 10:00:00 2026', '2026-12-06T12:00:00Z']) {
        expect(await h.receive(signed(bad))).toEqual({
          status: 'rejected',
          reason: 'event_time is missing or not an asctime date',
        })
      }
      expect(runs()).toBe(0)
    })

    it('starts with an empty record when the file is unreadable, and rewrites it', async () => {
      await setUp()
      writeFileSync(join(dir, 'revocations_seen.json'), '{"version":1,"seen":[["zz",1]]}')
      const h = handler()
      expect(h.seenCount).toBe(0)
      expect(await h.receive(signed(clock))).toMatchObject({ status: 'done' })
      expect(JSON.parse(readFileSync(join(dir, 'revocations_seen.json'), 'utf8')).seen).toHaveLength(1)
      expect(statSync(join(dir, 'revocations_seen.json')).mode & 0o777).toBe(0o600)
    })
  })

  it('reads asctime as UTC, with a space-padded day', () => {
    expect(parseEventTime('Sun Dec  6 09:03:07 2026')).toBe(Date.UTC(2026, 11, 6, 9, 3, 7))
    expect(parseEventTime(asctime(new Date(Date.UTC(2025, 10, 26, 15, 9))))).toBe(
      Date.UTC(2025, 10, 26, 15, 9),
    )
    expect(parseEventTime(undefined)).toBeNull()
  })
})
