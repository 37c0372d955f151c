/**
 * A terminal progress bar for long tasks (encoding, training, sampling): done/total, rate, ETA and
 * free-form fields such as the loss. On a terminal it redraws one line on stderr; when stderr is
 * not a terminal (CI logs, `2> file`) it prints a plain line every few seconds instead, so logs
 * stay readable.
 *
 * The rate counts only the work done since the bar was created (a resumed run starting at step
 * 5,000 does not report a huge rate), smoothed over the last stretch so the ETA follows speed
 * changes.
 *
 * @module
 */

/** Options of {@link ProgressBar}. */
export interface ProgressOptions {
  /** Text before the bar, e.g. "train". */
  label?: string;
  /** Work already done when the bar starts (a resumed run); default 0. */
  start?: number;
  /** Unit shown in the rate, e.g. "it" (it/s) or "img"; default "it". */
  unit?: string;
  /** Force terminal (redrawn line) or plain-line output; default: whether stderr is a terminal. */
  tty?: boolean;
  /** Plain-line mode: least milliseconds between two lines; default 10,000. */
  intervalMs?: number;
  /** Terminal mode: least milliseconds between two redraws; default 100. */
  redrawMs?: number;
  /** Where text goes; default stderr. */
  write?: (text: string) => void;
  /** Clock in milliseconds (tests); default `performance.now`. */
  now?: () => number;
  /** Width of the bar in characters; default 24. */
  width?: number;
}

/** Extra fields shown after the counters: numbers get 4 significant digits. */
export type ProgressFields = Record<string, string | number>;

/**
 * A progress bar on stderr.
 *
 * @example
 * ```ts
 * import { ProgressBar } from "./progress.ts";
 * const bar = new ProgressBar(300, { label: "train" });
 * for (let step = 1; step <= 300; step++) bar.update(step, { loss: 1 / step });
 * bar.finish();
 * ```
 */
export class ProgressBar {
  /** Total amount of work. */
  readonly total: number;
  /** Work done so far. */
  done: number;
  readonly #o: Required<Omit<ProgressOptions, "start" | "label">> & { label: string };
  readonly #t0: number;
  #start: number;
  #fields: ProgressFields = {};
  #lastDraw = -Infinity;
  #lastLen = 0;
  #lastLine = "";
  #finished = false;
  /** Recent (time, done) samples for a smoothed rate. */
  #window: [number, number][] = [];

  /** Creates a bar for `total` units of work (nothing is drawn until the first update). */
  constructor(total: number, options: ProgressOptions = {}) {
    this.total = Math.max(0, total);
    this.done = options.start ?? 0;
    this.#start = this.done;
    const enc = new TextEncoder();
    this.#o = {
      label: options.label ?? "",
      unit: options.unit ?? "it",
      tty: options.tty ?? stderrIsTerminal(),
      intervalMs: options.intervalMs ?? 10_000,
      redrawMs: options.redrawMs ?? 100,
      write: options.write ?? ((s: string) => writeAll(enc.encode(s))),
      now: options.now ?? (() => performance.now()),
      width: options.width ?? 24,
    };
    this.#t0 = this.#o.now();
    this.#window.push([this.#t0, this.done]);
  }

  /** Adds `n` units of work (default 1) and optionally sets fields. */
  tick(n = 1, fields?: ProgressFields): void {
    this.update(this.done + n, fields);
  }

  /**
   * Counts `n` units as done without timing them (work reused from an earlier run), so the rate
   * and ETA reflect only the work actually done now.
   */
  skip(n: number): void {
    this.done += n;
    this.#start += n;
    for (const w of this.#window) w[1] += n;
  }

  /** Sets the work done to `done` and optionally updates fields; redraws when due. */
  update(done: number, fields?: ProgressFields): void {
    this.done = done;
    if (fields) this.#fields = { ...this.#fields, ...fields };
    const now = this.#o.now();
    this.#window.push([now, done]);
    // Keep about the last 30 s (and at least two samples) for the smoothed rate.
    while (this.#window.length > 2 && now - this.#window[1][0] > 30_000) this.#window.shift();
    const due = now - this.#lastDraw >= (this.#o.tty ? this.#o.redrawMs : this.#o.intervalMs);
    if (due || done >= this.total) this.#draw(now);
  }

  /** Writes a line of text above the bar (the bar is redrawn under it on a terminal). */
  log(line: string): void {
    if (this.#o.tty && this.#lastLen > 0) this.#o.write("\r\x1b[2K");
    this.#o.write(line.endsWith("\n") ? line : line + "\n");
    if (this.#o.tty && this.#lastLen > 0 && !this.#finished) this.#draw(this.#o.now(), true);
  }

  /** Units per second since the bar started (smoothed over the recent window); 0 before any. */
  rate(): number {
    const [t0, d0] = this.#window[0];
    const [t1, d1] = this.#window[this.#window.length - 1];
    return t1 > t0 ? ((d1 - d0) * 1000) / (t1 - t0) : 0;
  }

  /** Estimated seconds to finish, or null when unknown. */
  eta(): number | null {
    const r = this.rate();
    return r > 0 ? Math.max(0, this.total - this.done) / r : null;
  }

  /** The status line (without the terminal control codes). */
  render(): string {
    const { label, unit, width } = this.#o;
    const frac = this.total > 0 ? Math.min(1, this.done / this.total) : 1;
    const filled = Math.round(frac * width);
    const bar = this.#o.tty ? `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ` : "";
    const r = this.rate();
    const eta = this.eta();
    const rate = r >= 1 || r === 0
      ? `${r.toFixed(2)} ${unit}/s`
      : `${(1 / r).toFixed(2)} s/${unit}`;
    const parts = [
      `${label ? label + " " : ""}${bar}${this.done}/${this.total} (${(frac * 100).toFixed(1)}%)`,
      rate,
      this.done >= this.total
        ? `took ${formatDuration((this.#o.now() - this.#t0) / 1000)}`
        : `ETA ${eta === null ? "?" : formatDuration(eta)}`,
      ...Object.entries(this.#fields).map(([k, v]) => `${k} ${formatValue(v)}`),
    ];
    return parts.join(" | ");
  }

  /** Draws the final state and ends the line. Idempotent. */
  finish(fields?: ProgressFields): void {
    if (this.#finished) return;
    if (fields) this.#fields = { ...this.#fields, ...fields };
    this.#draw(this.#o.now(), true);
    if (this.#o.tty) this.#o.write("\n");
    this.#finished = true;
  }

  /** Work done since the bar was created (excludes `start`). */
  get doneThisRun(): number {
    return this.done - this.#start;
  }

  #draw(now: number, force = false): void {
    if (this.#finished) return;
    if (!force && now === this.#lastDraw) return;
    this.#lastDraw = now;
    const line = this.render();
    // Plain-line mode never repeats an identical line (e.g. finish() right after the last update).
    if (!this.#o.tty && line === this.#lastLine) return;
    this.#lastLine = line;
    if (this.#o.tty) {
      this.#o.write(`\r\x1b[2K${line}`);
      this.#lastLen = line.length;
    } else {
      this.#o.write(line + "\n");
    }
  }
}

/**
 * Formats seconds as `42s`, `3m05s` or `2h07m`.
 *
 * @example
 * ```ts
 * import { formatDuration } from "./progress.ts";
 * formatDuration(185); // "3m05s"
 * ```
 */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(s / 3600);
  if (h < 100) return `${h}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, "0")}h`;
}

function formatValue(v: string | number): string {
  if (typeof v === "string") return v;
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : v.toPrecision(4);
}

function stderrIsTerminal(): boolean {
  try {
    return Deno.stderr.isTerminal();
  } catch {
    return false;
  }
}

function writeAll(bytes: Uint8Array): void {
  let off = 0;
  while (off < bytes.length) off += Deno.stderr.writeSync(bytes.subarray(off));
}
