/**
 * Runtime (IMA) and measured-boot policies for the loop: parsed and compiled once per distinct policy text
 * (keyed by its SHA-256) and shared by every agent using it, so 10,000 agents on one policy hold one copy. Each
 * compiled policy remembers its source, so the evidence pool can have its workers build the same one.
 */
import { KeylimeError } from '../common/errors.ts'
import { policyDigest, type VerifierRepository } from '../db/verifier-repository.ts'
import {
  type CompiledRuntimePolicy,
  compileRuntimePolicy,
  parseRuntimePolicy,
} from '../evidence/ima/index.ts'
import { type MbPolicy, type MbPolicyEngine, parseMbPolicy } from '../evidence/mb/index.ts'
import type { PolicySource } from './evidence-job.ts'

export class PolicyInputError extends KeylimeError {
  constructor(message: string) {
    super('ERR_POLICY_INPUT', message, { statusCode: 400 })
  }
}

/** An enrolled policy that is gone or no longer parses: the verifier cannot evaluate its agents. */
export class StoredPolicyError extends KeylimeError {
  constructor(message: string) {
    super('ERR_STORED_POLICY', message)
  }
}

const digest = policyDigest

/** Bounded: policies are few; a pathological number of distinct ones evicts the oldest. */
const MAX_CACHED = 1024

/** Compiled policies by the digest of their text, each with its source (no database). */
export class CompiledPolicies {
  protected readonly runtime = new Map<string, CompiledRuntimePolicy>()
  protected readonly mb = new Map<string, MbPolicy>()
  private readonly sources = new WeakMap<object, PolicySource>()

  constructor(protected readonly mbEngine: MbPolicyEngine) {}

  static checksum(text: string): string {
    return digest(text)
  }

  /** The source a compiled policy was built from; undefined for one built elsewhere. */
  sourceOf(policy: object): PolicySource | undefined {
    return this.sources.get(policy)
  }

  compileRuntimeText(text: string): CompiledRuntimePolicy {
    const key = `runtime:${digest(text)}`
    let c = this.runtime.get(key)
    if (!c) {
      c = compileRuntimePolicy(parseRuntimePolicy(text, { strict: false }))
      if (this.runtime.size >= MAX_CACHED) this.runtime.delete(this.runtime.keys().next().value as string)
      this.runtime.set(key, c)
      this.sources.set(c, { kind: 'runtime', key, text })
    }
    return c
  }

  /** As compileRuntimeText, with schema/compile errors as a 400 naming the problem. */
  compileRuntimeTextChecked(text: string): CompiledRuntimePolicy {
    try {
      return this.compileRuntimeText(text)
    } catch (err) {
      if (err instanceof KeylimeError)
        throw new PolicyInputError(`Runtime policy is malformatted: ${err.message}`)
      throw err
    }
  }

  parseMbText(text: string): MbPolicy {
    const key = `mb:${this.mbEngine}:${digest(text)}`
    let p = this.mb.get(key)
    if (!p) {
      p = parseMbPolicy(text, { engine: this.mbEngine })
      if (this.mb.size >= MAX_CACHED) this.mb.delete(this.mb.keys().next().value as string)
      this.mb.set(key, p)
      this.sources.set(p, { kind: 'mb', key, text, engine: this.mbEngine })
    }
    return p
  }

  /** As parseMbText, with schema errors as a 400 naming the problem. */
  parseMbTextChecked(text: string): MbPolicy {
    try {
      return this.parseMbText(text)
    } catch (err) {
      if (err instanceof KeylimeError)
        throw new PolicyInputError(`Measured boot policy is malformatted: ${err.message}`)
      throw err
    }
  }
}

/** The loop's policies: compiled policies loaded by the ids enrolled agents reference. */
export class PolicyStore extends CompiledPolicies {
  constructor(
    private readonly repo: VerifierRepository,
    mbEngine: MbPolicyEngine,
  ) {
    super(mbEngine)
  }

  /** The agent's runtime policy, or null when it has none. Compiled once per body digest, read only then. */
  async runtimeFor(policyId: number | null): Promise<CompiledRuntimePolicy | null> {
    if (policyId === null) return null
    const row = await this.repo.allowlistMetaById(policyId)
    // an enrolled policy that has vanished must not silently turn the IMA check off
    if (!row) throw new StoredPolicyError(`runtime policy ${policyId} is enrolled but no longer stored`)
    if (row.body_digest === null) {
      // a row written in the old shape (text inline) after the migration moved the texts: still enforced
      const inline = (await this.repo.getAllowlist(row.name))?.ima_policy
      return inline ? this.compileRuntimeText(inline) : null
    }
    const cached = this.runtime.get(`runtime:${row.body_digest}`)
    if (cached) return cached
    const text = await this.storedBody(row.name, row.body_digest)
    return text ? this.compileRuntimeText(text) : null
  }

  /** The agent's measured-boot policy, or null when it has none (or an empty one). */
  async mbFor(policyId: number | null): Promise<MbPolicy | null> {
    if (policyId === null) return null
    const row = await this.repo.mbPolicyMetaById(policyId)
    if (!row) throw new StoredPolicyError(`measured-boot policy ${policyId} is enrolled but no longer stored`)
    if (row.body_digest === null) {
      const inline = (await this.repo.getMbPolicy(row.name))?.mb_policy
      const p = inline ? this.parseMbText(inline) : null
      return p && p.refstate !== null ? p : null
    }
    const cached = this.mb.get(`mb:${this.mbEngine}:${row.body_digest}`)
    const text = cached ? null : await this.storedBody(row.name, row.body_digest)
    if (!cached && !text) return null
    const p = cached ?? this.parseMbText(text as string)
    return p.refstate === null ? null : p
  }

  /** A stored body, checked against its digest (a body changed in place is not the policy that was enrolled). */
  private async storedBody(name: string, bodyDigest: string): Promise<string> {
    const text = await this.repo.policyBodyText(bodyDigest)
    if (text === undefined) throw new StoredPolicyError(`policy ${name}: its body is no longer stored`)
    if (digest(text) !== bodyDigest)
      throw new StoredPolicyError(`policy ${name}: stored body does not match its digest`)
    return text
  }
}
