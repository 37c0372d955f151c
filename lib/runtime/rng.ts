/**
 * Seeded random numbers that reproduce across backends and runs.
 *
 * Noise, timesteps, class dropout and shuffles are drawn here in plain TypeScript (not with
 * backend kernels), so `wasm`, `cpu` and `webgpu` see the very same numbers for the same seed,
 * and the generator's state can be saved in a checkpoint and restored for a bit-exact resume.
 * The generator is xoshiro128** seeded through splitmix32; normals use Box-Muller.
 *
 * @module
 */

/** The largest seed: seeds are 32-bit unsigned integers, 0 ..= 2^32 - 1. */
export const MAX_SEED = 0xffffffff;

/**
 * The one rule for user-given seeds: an integer from 0 to {@link MAX_SEED} (2^32 - 1). The
 * generator has 32 bits of seed, so a larger or negative seed would silently alias another one
 * (`2^32` would give the images of `0`, `-1` those of `2^32 - 1`); such seeds are refused
 * instead. Returns the seed; throws a `RangeError` naming `what` (a flag or option name) otherwise.
 *
 * @example
 * ```ts
 * import { checkSeed } from "./rng.ts";
 * if (checkSeed(42, "--seed") !== 42) throw new Error("42 is a fine seed");
 * try {
 *   checkSeed(2 ** 32, "--seed");
 *   throw new Error("should have thrown");
 * } catch (e) {
 *   if (!(e instanceof RangeError) || !e.message.includes("--seed must be an integer")) throw e;
 * }
 * ```
 */
export function checkSeed(seed: number, what = "seed"): number {
  if (typeof seed !== "number" || !Number.isInteger(seed) || seed < 0 || seed > MAX_SEED) {
    throw new RangeError(
      `${what} must be an integer from 0 to ${MAX_SEED} (2^32 - 1), got ${
        typeof seed === "number" ? seed : JSON.stringify(seed)
      }: seeds are 32-bit, so a larger or negative seed would silently repeat another one's ` +
        `results; pick a seed in that range`,
    );
  }
  return seed;
}

/** Serializable state of an {@link Rng}: four 32-bit words plus a cached normal. */
export interface RngState {
  /** The xoshiro128** state words. */
  s: [number, number, number, number];
  /** The cached second Box-Muller value, if any. */
  spare: number | null;
}

/**
 * A small, fast, seedable random generator (xoshiro128**).
 *
 * @example
 * ```ts
 * import { Rng } from "./rng.ts";
 * const rng = new Rng(42);
 * const u = rng.uniform();          // in [0, 1)
 * const z = rng.normalArray(8);     // Float32Array of 8 N(0, 1) values
 * const again = Rng.fromState(rng.state());
 * ```
 */
export class Rng {
  #s: Uint32Array = new Uint32Array(4);
  #spare: number | null = null;

  /**
   * Seeds the generator. Any number works here (truncated, then taken modulo 2^32, so `2^32`
   * seeds like `0`); validate user-given seeds with {@link checkSeed} first so they never alias.
   */
  constructor(seed = 0) {
    let x = (Math.trunc(seed) >>> 0) ^ 0x9e3779b9;
    for (let i = 0; i < 4; i++) {
      // splitmix32 spreads one seed over the four state words.
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.#s[i] = (z ^ (z >>> 16)) >>> 0;
    }
    if ((this.#s[0] | this.#s[1] | this.#s[2] | this.#s[3]) === 0) this.#s[0] = 1;
  }

  /** Restores a generator from {@link Rng.state}. */
  static fromState(state: RngState): Rng {
    const r = new Rng(0);
    r.#s.set(state.s);
    r.#spare = state.spare;
    return r;
  }

  /** A copy of the current state (JSON-serializable). */
  state(): RngState {
    return { s: [this.#s[0], this.#s[1], this.#s[2], this.#s[3]], spare: this.#spare };
  }

  /** Next raw 32-bit unsigned integer. */
  nextU32(): number {
    const s = this.#s;
    const result = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** Uniform float in [0, 1) with 32 bits of randomness. */
  uniform(): number {
    return this.nextU32() / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.uniform() * n);
  }

  /** One standard normal value (Box-Muller, the second value of each pair is cached). */
  normal(): number {
    if (this.#spare !== null) {
      const v = this.#spare;
      this.#spare = null;
      return v;
    }
    // 1 - u keeps the log argument in (0, 1].
    const u1 = 1 - this.uniform();
    const u2 = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u1));
    this.#spare = r * Math.sin(2 * Math.PI * u2);
    return r * Math.cos(2 * Math.PI * u2);
  }

  /** `n` standard normal values. */
  normalArray(n: number): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.normal();
    return out;
  }

  /** `n` uniform values in [0, 1). */
  uniformArray(n: number): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.uniform();
    return out;
  }

  /** A random permutation of 0..n-1 (Fisher-Yates). */
  permutation(n: number): Int32Array {
    const p = new Int32Array(n);
    for (let i = 0; i < n; i++) p[i] = i;
    for (let i = n - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const tmp = p[i];
      p[i] = p[j];
      p[j] = tmp;
    }
    return p;
  }
}

/**
 * Derives the seed of one random stream: a 32-bit hash of a user seed, a stream tag (what the
 * numbers are for) and a counter (which image, step or epoch). Every seeded stream in Anthos is
 * `new Rng(deriveSeed(seed, STREAM, i))`, so streams never overlap and each one is reproducible
 * on its own, whatever the batching or the resume point.
 *
 * @param seed the user's seed (an integer; a float is truncated).
 * @param stream a tag for the kind of stream, e.g. {@link IMAGE_NOISE_STREAM}.
 * @param counter the index within that kind (image index, step, epoch).
 * @example
 * ```ts
 * import { deriveSeed, IMAGE_NOISE_STREAM, Rng } from "./rng.ts";
 * const a = deriveSeed(42, IMAGE_NOISE_STREAM, 0);
 * if (a !== deriveSeed(42, IMAGE_NOISE_STREAM, 0)) throw new Error("must be deterministic");
 * if (a === deriveSeed(42, IMAGE_NOISE_STREAM, 1)) throw new Error("images get their own stream");
 * if (!(a >= 0 && a < 2 ** 32 && Number.isInteger(a))) throw new Error("a 32-bit seed");
 * const noise = new Rng(a).normalArray(4);
 * ```
 */
export function deriveSeed(seed: number, stream: number, counter: number): number {
  let h = (Math.trunc(seed) ^ Math.imul(stream, 0x9e3779b1)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = (h ^ Math.imul(counter + 1, 0xc2b2ae35)) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0x27d4eb2f) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * The stream tag of the sampling noise of each generated image. Chosen so that
 * `Math.imul(IMAGE_NOISE_STREAM, 0x9e3779b1)` is `0x51ed270b`, the constant the first releases
 * hashed with: seeds from before {@link deriveSeed} existed give the very same images.
 */
export const IMAGE_NOISE_STREAM = 0x432d5f7b;

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
