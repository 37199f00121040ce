/** Registrar metrics: registrations and activations by outcome, counted from each answer's status. */
import { Counter, type Registry } from 'prom-client'

export type RegistrarOutcome = 'ok' | 'refused' | 'throttled' | 'error'

export class RegistrarMetrics {
  private readonly registrations: Counter<'outcome'>
  private readonly activations: Counter<'outcome'>

  constructor(registry: Registry) {
    this.registrations = new Counter({
      name: 'keylime_registrar_registrations_total',
      help: 'Agent registration requests by outcome (ok, refused: 4xx, throttled: 429, error: 5xx)',
      labelNames: ['outcome'],
      registers: [registry],
    })
    this.activations = new Counter({
      name: 'keylime_registrar_activations_total',
      help: 'Agent activation requests by outcome (ok, refused: 4xx, throttled: 429, error: 5xx)',
      labelNames: ['outcome'],
      registers: [registry],
    })
    for (const outcome of ['ok', 'refused', 'throttled', 'error'] as const) {
      this.registrations.inc({ outcome }, 0)
      this.activations.inc({ outcome }, 0)
    }
  }

  answered(kind: 'registration' | 'activation', statusCode: number): void {
    const outcome: RegistrarOutcome =
      statusCode < 400 ? 'ok' : statusCode === 429 ? 'throttled' : statusCode < 500 ? 'refused' : 'error'
    ;(kind === 'registration' ? this.registrations : this.activations).inc({ outcome })
  }
}
