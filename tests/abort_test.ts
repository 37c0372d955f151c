// The tasks' stop handler, in a real subprocess: SIGTERM and SIGINT take the graceful path on the
// first signal (the work sees an aborted AbortSignal and finishes), a second signal exits at once.
import { assert, assertEquals } from "./_assert.ts";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

// Works in small steps until stopped; "saves" (prints) on the graceful path.
const SCRIPT = `
import { stopOnSignals } from "${ROOT}/lib/cli/abort.ts";
const stop = stopOnSignals({ onStop: (s) => console.log("stopping on " + s) });
console.log("ready");
const t0 = Date.now();
while (!stop.signal.aborted && Date.now() - t0 < 20_000) {
  await new Promise((r) => setTimeout(r, 20));
}
if (Deno.args[0] === "hang") await new Promise((r) => setTimeout(r, 20_000));
console.log(stop.signal.aborted ? "saved: " + stop.signal.reason.message + " code " + stop.exitCode + " by " + stop.stoppedBy : "timed out");
stop.dispose();
Deno.exit(stop.signal.aborted ? 3 : 1);
`;

async function run(
  signals: Deno.Signal[],
  mode = "",
): Promise<{ code: number; stdout: string }> {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/main.ts`, SCRIPT);
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", "--config", `${ROOT}/deno.json`, `${dir}/main.ts`, mode],
      cwd: ROOT,
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let stdout = "";
    while (!stdout.includes("ready\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      stdout += value;
    }
    for (const s of signals) {
      child.kill(s);
      await new Promise((r) => setTimeout(r, 300));
    }
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      stdout += value;
    }
    return { code: (await child.status).code, stdout };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "stopOnSignals: SIGTERM and SIGINT stop gracefully; a second signal exits at once",
  ignore: Deno.build.os === "windows",
  fn: async () => {
    const term = await run(["SIGTERM"]);
    assertEquals(term.code, 3, term.stdout); // the graceful path's own exit code
    assert(term.stdout.includes("stopping on SIGTERM"), term.stdout);
    assert(term.stdout.includes("saved: stopped by SIGTERM code 143 by SIGTERM"), term.stdout);
    const int = await run(["SIGINT"]);
    assertEquals(int.code, 3, int.stdout);
    assert(int.stdout.includes("saved: stopped by SIGINT code 130 by SIGINT"), int.stdout);
    // The work ignores the stop for a while: the second signal ends the process (128 + signal).
    const twice = await run(["SIGTERM", "SIGTERM"], "hang");
    assertEquals(twice.code, 143, twice.stdout);
    assert(!twice.stdout.includes("saved"), twice.stdout);
    const twiceInt = await run(["SIGINT", "SIGINT"], "hang");
    assertEquals(twiceInt.code, 130, twiceInt.stdout);
    assert(!twiceInt.stdout.includes("saved"), twiceInt.stdout);
  },
});
