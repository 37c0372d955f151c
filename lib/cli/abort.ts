/**
 * The tasks' one stop handler: Ctrl-C (SIGINT) and SIGTERM (what `kill`, `timeout`, Docker and
 * job schedulers send) become an `AbortSignal`. The first signal asks the work to stop at the
 * next safe point (the task then saves what it has and exits); a second one exits at once.
 *
 * @module
 */

/** Options of {@link stopOnSignals}. */
export interface StopOnSignalsOptions {
  /** Called on the first signal, e.g. to say what happens now. Default: nothing. */
  onStop?: (signal: Deno.Signal) => void;
  /** The signals to handle. Default: `["SIGINT", "SIGTERM"]` (only SIGINT on Windows). */
  signals?: readonly Deno.Signal[];
  /** Exit code on a second signal. Default: 130 (128 + SIGINT), as shells report Ctrl-C. */
  exitCode?: number;
}

/** What {@link stopOnSignals} returns. */
export interface SignalStop extends Disposable {
  /** Aborted on the first signal; its `reason` names the signal. */
  readonly signal: AbortSignal;
  /** Removes the signal listeners (the default handling comes back). */
  dispose(): void;
}

/**
 * Turns SIGINT and SIGTERM into an `AbortSignal`: the first signal aborts it (graceful stop), a
 * second one exits the process with `exitCode`. Call `dispose()` (or use `using`) when the work
 * is done, so later signals kill the process as usual.
 *
 * @example
 * ```ts
 * import { stopOnSignals } from "./abort.ts";
 * using stop = stopOnSignals({ onStop: () => console.error("stopping after this step ...") });
 * for (let step = 0; step < 3 && !stop.signal.aborted; step++) {
 *   // ... one unit of work, then check the signal again
 * }
 * if (stop.signal.aborted) throw new Error("nothing sent a signal here");
 * ```
 */
export function stopOnSignals(options: StopOnSignalsOptions = {}): SignalStop {
  const controller = new AbortController();
  const signals = options.signals ??
    (Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"]) as Deno.Signal[];
  const handlers: [Deno.Signal, () => void][] = [];
  for (const sig of signals) {
    const handler = () => {
      if (controller.signal.aborted) Deno.exit(options.exitCode ?? 130);
      controller.abort(new DOMException(`stopped by ${sig}`, "AbortError"));
      options.onStop?.(sig);
    };
    Deno.addSignalListener(sig, handler);
    handlers.push([sig, handler]);
  }
  let disposed = false;
  const dispose = () => {
    if (disposed) return;
    disposed = true;
    for (const [sig, handler] of handlers) Deno.removeSignalListener(sig, handler);
  };
  return { signal: controller.signal, dispose, [Symbol.dispose]: dispose };
}
