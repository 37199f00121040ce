/**
 * Min-heap of (due time, item) for the scheduler: O(log n) push/pop, one entry per scheduled step. Cancelled
 * steps are dropped lazily by the caller (each item carries a generation), so nothing needs a search.
 */
export class DueQueue<T> {
  private readonly due: number[] = []
  private readonly items: T[] = []

  get size(): number {
    return this.due.length
  }

  peekDue(): number | undefined {
    return this.due[0]
  }

  push(dueAt: number, item: T): void {
    this.due.push(dueAt)
    this.items.push(item)
    let i = this.due.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if ((this.due[parent] as number) <= dueAt) break
      this.swap(i, parent)
      i = parent
    }
  }

  pop(): { dueAt: number; item: T } | undefined {
    const n = this.due.length
    if (n === 0) return undefined
    const top = { dueAt: this.due[0] as number, item: this.items[0] as T }
    const lastDue = this.due.pop() as number
    const lastItem = this.items.pop() as T
    if (n > 1) {
      this.due[0] = lastDue
      this.items[0] = lastItem
      let i = 0
      const len = n - 1
      for (;;) {
        const l = 2 * i + 1
        const r = l + 1
        let m = i
        if (l < len && (this.due[l] as number) < (this.due[m] as number)) m = l
        if (r < len && (this.due[r] as number) < (this.due[m] as number)) m = r
        if (m === i) break
        this.swap(i, m)
        i = m
      }
    }
    return top
  }

  clear(): void {
    this.due.length = 0
    this.items.length = 0
  }

  private swap(a: number, b: number): void {
    const d = this.due[a] as number
    this.due[a] = this.due[b] as number
    this.due[b] = d
    const t = this.items[a] as T
    this.items[a] = this.items[b] as T
    this.items[b] = t
  }
}
