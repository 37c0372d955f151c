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
  /**
   * Exit code on a second signal. Default: 128 + the signal's number, as shells report it
   * (130 for Ctrl-C, 143 for SIGTERM).
   */
  exitCode?: number;
}

/** What {@link stopOnSignals} returns. */
export interface SignalStop extends Disposable {
  /** Aborted on the first signal; its `reason` names the signal. */
  readonly signal: AbortSignal;
  /** The signal that stopped the work (null until one came), e.g. to pick the exit code. */
  readonly stoppedBy: Deno.Signal | null;
  /** The conventional exit code for the stop: 128 + signal number (130, 143), or 0 if none. */
  readonly exitCode: number;
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
 * if (stop.signal.aborted || stop.stoppedBy !== null) throw new Error("no signal came here");
 * if (stop.exitCode !== 0) throw new Error("exit code 0 without a stop");
 * ```
 */
export function stopOnSignals(options: StopOnSignalsOptions = {}): SignalStop {
  const controller = new AbortController();
  const signals = options.signals ??
    (Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"]) as Deno.Signal[];
  const handlers: [Deno.Signal, () => void][] = [];
  let stoppedBy: Deno.Signal | null = null;
  for (const sig of signals) {
    const handler = () => {
      if (controller.signal.aborted) Deno.exit(options.exitCode ?? signalExitCode(sig));
      stoppedBy = sig;
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
  return {
    signal: controller.signal,
    get stoppedBy() {
      return stoppedBy;
    },
    get exitCode() {
      return stoppedBy ? signalExitCode(stoppedBy) : 0;
    },
    dispose,
    [Symbol.dispose]: dispose,
  };
}

const SIGNAL_NUMBERS: Partial<Record<Deno.Signal, number>> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGTERM: 15,
};

/** 128 + the signal's number, what shells report for a process a signal ended (130 for SIGINT). */
function signalExitCode(signal: Deno.Signal): number {
  return 128 + (SIGNAL_NUMBERS[signal] ?? 2);
}
