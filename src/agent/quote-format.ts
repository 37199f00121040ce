/** The agent's quote string, built with team QUOTE's codecs (protocols §A.1): attest, signature, tpm2-tools PCR blob. */
import { encodePcrBlob } from '../evidence/quote/pcr-blob.ts'
import { formatQuoteString } from '../evidence/quote/quote-string.ts'
import type { AgentQuote, HashAlgName } from './agent-tpm.ts'

export function formatAgentQuote(q: AgentQuote, hashAlg: HashAlgName): string {
  const pcrBlob = encodePcrBlob({ banks: [{ hashAlg, values: q.pcrValues }] })
  return formatQuoteString({ attest: q.attest, signature: q.signature, pcrBlob })
}
