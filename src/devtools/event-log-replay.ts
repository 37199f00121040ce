/**
 * Extends a real UEFI event log into a (software) TPM so that the TPM's quote matches the log: used by e2e tests
 * and the demo to attest a swtpm agent with a real machine's measured-boot log.
 */
import { extendPlan, parseEventLog } from '../evidence/mb/index.ts'
import { pcrExtend } from '../tpm/keylime-client.ts'
import { Tpm } from '../tpm/tpm.ts'

export type ExtendBank = 'sha1' | 'sha256' | 'sha384' | 'sha512'

/**
 * Extends every measurement of `logBytes` into the TPM at `transport`, in log order, for the `banks` the TPM has.
 * Refuses logs whose replay needs a TPM started at another locality or with an H-CRTM sequence (swtpm started by
 * LocalCluster cannot reproduce those). Returns the number of extends.
 */
export async function extendEventLogIntoTpm(
  transport: string,
  logBytes: Uint8Array,
  banks: ExtendBank[] = ['sha1', 'sha256'],
): Promise<number> {
  const plan = extendPlan(parseEventLog(logBytes))
  if (plan.hcrtm)
    throw new Error('event log starts with an H-CRTM sequence; it cannot be replayed into this TPM')
  if (plan.startupLocality !== null && plan.startupLocality !== 0)
    throw new Error(
      `event log needs TPM2_Startup at locality ${plan.startupLocality}; only locality 0 is supported`,
    )
  const tpm = await Tpm.open(transport)
  try {
    for (const step of plan.steps) {
      const digests: Partial<Record<ExtendBank, Uint8Array>> = {}
      for (const bank of banks) {
        const d = step.digests[bank]
        if (d) digests[bank] = d
      }
      if (Object.keys(digests).length > 0) await pcrExtend(tpm, step.pcr, digests)
    }
  } finally {
    await tpm.close()
  }
  return plan.steps.length
}
