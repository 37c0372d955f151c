// downloadFile against a real HTTP server on 127.0.0.1: caching, checksums, Range resume, failures.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { anthosHome, downloadFile, sha256File } from "../lib/io/download.ts";

const BODY = new Uint8Array(100_000).map((_, i) => (i * 7919) % 251);
const SHA = createHash("sha256").update(BODY).digest("hex");
const MD5 = createHash("md5").update(BODY).digest("hex");

interface TestServer {
  url: string;
  requests: { path: string; range: string | null }[];
  close(): Promise<void>;
}

/** Serves BODY at /file.bin (Range-aware unless `ranges` is false) and 404 elsewhere. */
function serve(ranges = true): TestServer {
  const requests: TestServer["requests"] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const path = new URL(req.url).pathname;
    const range = req.headers.get("range");
    requests.push({ path, range });
    if (path !== "/file.bin") return new Response("not here", { status: 404 });
    const m = /^bytes=(\d+)-$/.exec(range ?? "");
    if (ranges && m) {
      const start = Number(m[1]);
      if (start >= BODY.length) return new Response(null, { status: 416 });
      return new Response(BODY.slice(start), {
        status: 206,
        headers: { "content-range": `bytes ${start}-${BODY.length - 1}/${BODY.length}` },
      });
    }
    return new Response(BODY);
  });
  const { port } = server.addr as Deno.NetAddr;
  return { url: `http://127.0.0.1:${port}`, requests, close: () => server.shutdown() };
}

/** The error `fn` rejects with (fails when it resolves). */
async function rejection(fn: () => Promise<unknown>): Promise<Error> {
  try {
    await fn();
  } catch (err) {
    assert(err instanceof Error);
    return err;
  }
  throw new assert.AssertionError({ message: "expected a rejection" });
}

function assertIncludes(text: string, part: string): void {
  assert(
    text.includes(part),
    `expected ${JSON.stringify(part)} in:
${text}`,
  );
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test("downloadFile: downloads, verifies, and a second call uses the cache", async () => {
  const srv = serve();
  const dir = await Deno.makeTempDir();
  try {
    const dest = `${dir}/sub/file.bin`;
    const progress: number[] = [];
    const got = await downloadFile(`${srv.url}/file.bin`, dest, {
      sha256: SHA,
      size: BODY.length,
      onProgress: (done, total) => {
        assert.deepEqual(total, BODY.length);
        progress.push(done);
      },
    });
    assert.deepEqual(got, dest);
    assert.deepEqual(await Deno.readFile(dest), BODY);
    assert.deepEqual(progress.at(-1), BODY.length);
    assert(!(await exists(`${dest}.part`)));
    assert.deepEqual(srv.requests.length, 1);

    await downloadFile(`${srv.url}/file.bin`, dest, { sha256: SHA });
    await downloadFile(`${srv.url}/file.bin`, dest, { md5: MD5, size: BODY.length });
    await downloadFile(`${srv.url}/file.bin`, dest);
    assert.deepEqual(srv.requests.length, 1, "cached file must not hit the server");
    assert.deepEqual(await sha256File(dest), SHA);
  } finally {
    await srv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("downloadFile: a cached file with the wrong checksum is downloaded again", async () => {
  const srv = serve();
  const dir = await Deno.makeTempDir();
  try {
    const dest = `${dir}/file.bin`;
    await Deno.writeFile(dest, new Uint8Array([1, 2, 3]));
    await downloadFile(`${srv.url}/file.bin`, dest, { sha256: SHA });
    assert.deepEqual(await Deno.readFile(dest), BODY);
    assert.deepEqual(srv.requests.length, 1);
  } finally {
    await srv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("downloadFile: checksum mismatch deletes the part file and says so", async () => {
  const srv = serve();
  const dir = await Deno.makeTempDir();
  try {
    const dest = `${dir}/file.bin`;
    const err = await rejection(() =>
      downloadFile(`${srv.url}/file.bin`, dest, { sha256: "0".repeat(64) })
    );
    assertIncludes(err.message, "checksum mismatch");
    assertIncludes(err.message, SHA);
    assert(!(await exists(dest)));
    assert(!(await exists(`${dest}.part`)));

    const md5err = await rejection(() =>
      downloadFile(`${srv.url}/file.bin`, dest, { md5: "f".repeat(32) })
    );
    assertIncludes(md5err.message, `md5 ${MD5}, expected ${"f".repeat(32)}`);
    assert(!(await exists(dest)));
  } finally {
    await srv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("downloadFile: resumes a partial .part file with a Range request", async () => {
  const srv = serve();
  const dir = await Deno.makeTempDir();
  try {
    const dest = `${dir}/file.bin`;
    await Deno.writeFile(`${dest}.part`, BODY.slice(0, 40_000));
    const seen: number[] = [];
    await downloadFile(`${srv.url}/file.bin`, dest, {
      sha256: SHA,
      md5: MD5,
      onProgress: (done) => seen.push(done),
    });
    assert.deepEqual(srv.requests, [{ path: "/file.bin", range: "bytes=40000-" }]);
    assert(seen[0] > 40_000, "progress counts the resumed bytes");
    assert.deepEqual(await Deno.readFile(dest), BODY);
    assert(!(await exists(`${dest}.part`)));
  } finally {
    await srv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("downloadFile: restarts cleanly when the server ignores Range (200)", async () => {
  const srv = serve(false);
  const dir = await Deno.makeTempDir();
  try {
    const dest = `${dir}/file.bin`;
    // Garbage in the part file: if it were kept, the checksum would fail.
    await Deno.writeFile(`${dest}.part`, new Uint8Array(30_000).fill(9));
    await downloadFile(`${srv.url}/file.bin`, dest, { sha256: SHA, size: BODY.length });
    assert.deepEqual(srv.requests[0].range, "bytes=30000-");
    assert.deepEqual(await Deno.readFile(dest), BODY);
  } finally {
    await srv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("downloadFile: a complete stale .part (416) is fetched again from the start", async () => {
  const srv = serve();
  const dir = await Deno.makeTempDir();
  try {
    const dest = `${dir}/file.bin`;
    await Deno.writeFile(`${dest}.part`, new Uint8Array(BODY.length + 5));
    await downloadFile(`${srv.url}/file.bin`, dest, { sha256: SHA });
    assert.deepEqual(srv.requests.map((r) => r.range), [`bytes=${BODY.length + 5}-`, null]);
    assert.deepEqual(await Deno.readFile(dest), BODY);
  } finally {
    await srv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("downloadFile: HTTP 404 gives an error with the manual hint, no file left", async () => {
  const srv = serve();
  const dir = await Deno.makeTempDir();
  try {
    const dest = `${dir}/missing.bin`;
    const hint = `download missing.bin from the site and place it at ${dest}`;
    const err = await rejection(() =>
      downloadFile(`${srv.url}/missing.bin`, dest, { manualHint: hint })
    );
    assertIncludes(err.message, "HTTP 404");
    assertIncludes(err.message, `${srv.url}/missing.bin`);
    assertIncludes(err.message, hint);
    assert(!(await exists(dest)));
    assert(!(await exists(`${dest}.part`)));
  } finally {
    await srv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("downloadFile: connection refused is an offline error naming URL and destination", async () => {
  const srv = serve();
  const url = `${srv.url}/file.bin`;
  await srv.close(); // nothing listens on that port now
  const dir = await Deno.makeTempDir();
  try {
    const dest = `${dir}/file.bin`;
    const err = await rejection(() => downloadFile(url, dest));
    assertIncludes(err.message, "network error");
    assertIncludes(err.message, url);
    assertIncludes(err.message, `place it at ${dest}`);
    assert(!(await exists(dest)));
    assert(!(await exists(`${dest}.part`)));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("downloadFile: a truncated response keeps the .part file, never dest", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const dest = `${dir}/file.bin`;
    // A fetch whose body dies half-way, like a dropped connection.
    const fakeFetch = ((_url: string | URL | Request) => {
      let pulls = 0;
      const body = new ReadableStream<Uint8Array>({
        pull(ctrl) {
          if (pulls++ === 0) ctrl.enqueue(BODY.slice(0, 10_000));
          else ctrl.error(new Error("connection reset"));
        },
      });
      return Promise.resolve(new Response(body, { status: 200 }));
    }) as typeof fetch;
    const err = await rejection(() =>
      downloadFile("http://127.0.0.1:9/file.bin", dest, { fetch: fakeFetch })
    );
    assertIncludes(err.message, "connection reset");
    assert(!(await exists(dest)));
    assert.deepEqual((await Deno.stat(`${dest}.part`)).size, 10_000);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("anthosHome: ANTHOS_HOME, then XDG_CACHE_HOME/anthos, then ~/.cache/anthos", () => {
  const saved = { a: Deno.env.get("ANTHOS_HOME"), x: Deno.env.get("XDG_CACHE_HOME") };
  try {
    Deno.env.set("ANTHOS_HOME", "/tmp/ah");
    Deno.env.set("XDG_CACHE_HOME", "/tmp/xdg");
    assert.deepEqual(anthosHome(), "/tmp/ah");
    Deno.env.delete("ANTHOS_HOME");
    assert.deepEqual(anthosHome(), "/tmp/xdg/anthos");
    Deno.env.delete("XDG_CACHE_HOME");
    assert(anthosHome().endsWith("/.cache/anthos"));
  } finally {
    for (const [k, v] of [["ANTHOS_HOME", saved.a], ["XDG_CACHE_HOME", saved.x]] as const) {
      if (v === undefined) Deno.env.delete(k);
      else Deno.env.set(k, v);
    }
  }
});

Deno.test("anthosHome: a root that is a file (or under one) is a clear error, not 'Not a directory'", async () => {
  const saved = { a: Deno.env.get("ANTHOS_HOME"), x: Deno.env.get("XDG_CACHE_HOME") };
  const dir = await Deno.makeTempDir({ prefix: "anthos-home-" });
  const file = `${dir}/home.txt`;
  await Deno.writeTextFile(file, "not a folder");
  try {
    for (const home of [file, `${file}/sub`]) {
      Deno.env.set("ANTHOS_HOME", home);
      assert.throws(() => anthosHome(), (e: Error) => {
        assert(e.message.startsWith(`ANTHOS_HOME=${home} is not a folder`), e.message);
        assert(e.message.includes("point ANTHOS_HOME at a folder"), e.message);
        return true;
      });
    }
    Deno.env.set("ANTHOS_HOME", `${dir}/not-yet`); // created on first use: fine
    assert.equal(anthosHome(), `${dir}/not-yet`);
    Deno.env.delete("ANTHOS_HOME");
    Deno.env.set("XDG_CACHE_HOME", dir);
    await Deno.writeTextFile(`${dir}/anthos`, "x");
    assert.throws(
      () => anthosHome(),
      /the cache root .*\/anthos \(XDG_CACHE_HOME\) is not a folder/,
    );
  } finally {
    for (const [k, v] of [["ANTHOS_HOME", saved.a], ["XDG_CACHE_HOME", saved.x]] as const) {
      if (v === undefined) Deno.env.delete(k);
      else Deno.env.set(k, v);
    }
    await Deno.remove(dir, { recursive: true });
  }
});
