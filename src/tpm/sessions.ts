import { randomBytes } from 'node:crypto'
import { FlushContext } from './commands/context.ts'
import { PolicySecret, StartAuthSession } from './commands/session.ts'
import { digestSize, TpmAlg, TpmRh, TpmSe } from './constants.ts'
import { HmacSession, PasswordSession, PolicySession } from './session.ts'
import type { Tpm } from './tpm.ts'

const NULL_SYMMETRIC = { algorithm: TpmAlg.Null, keyBits: 0, mode: TpmAlg.Null }

async function start(tpm: Tpm, sessionType: number, hashAlg: number) {
  return tpm.run(StartAuthSession, {
    tpmKey: TpmRh.Null,
    bind: TpmRh.Null,
    nonceCaller: randomBytes(digestSize(hashAlg) ?? 32),
    encryptedSalt: new Uint8Array(0),
    sessionType,
    symmetric: NULL_SYMMETRIC,
    authHash: hashAlg,
  })
}

/** Starts an unsalted, unbound policy session. */
export async function startPolicySession(tpm: Tpm, hashAlg: number = TpmAlg.Sha256): Promise<PolicySession> {
  const { sessionHandle, nonceTpm } = await start(tpm, TpmSe.Policy, hashAlg)
  return new PolicySession(sessionHandle, hashAlg, nonceTpm)
}

/** Starts an unsalted, unbound HMAC session for an entity whose auth value is `password`. */
export async function startHmacSession(
  tpm: Tpm,
  password?: string | Uint8Array,
  hashAlg: number = TpmAlg.Sha256,
): Promise<HmacSession> {
  const { sessionHandle, nonceTpm } = await start(tpm, TpmSe.Hmac, hashAlg)
  return new HmacSession(sessionHandle, hashAlg, nonceTpm, password)
}

/**
 * A policy session satisfying the TCG EK policy: PolicySecret(TPM_RH_ENDORSEMENT), authorised with the
 * endorsement password. Used once (the TPM flushes it after the command it authorises).
 */
export async function ekPolicySession(
  tpm: Tpm,
  endorsementPassword?: string | Uint8Array,
): Promise<PolicySession> {
  const session = await startPolicySession(tpm)
  try {
    await tpm.run(
      PolicySecret,
      {
        authHandle: TpmRh.Endorsement,
        policySession: session.handle,
        nonceTpm: new Uint8Array(0),
        cpHashA: new Uint8Array(0),
        policyRef: new Uint8Array(0),
        expiration: 0,
      },
      [new PasswordSession(endorsementPassword)],
    )
  } catch (err) {
    await tpm.run(FlushContext, { flushHandle: session.handle }).catch(() => {})
    throw err
  }
  return session
}
