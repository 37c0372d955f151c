/**
 * File formats and files: safetensors, state-dict checks, images (PNG/JPEG via sharp), MATLAB
 * .mat, downloads, atomic writes.
 *
 * @module
 */

export * from "./safetensors.ts";
export * from "./state_dict.ts";
export * from "./image.ts";
export { checkRaw, encodePng } from "./pixels.ts";
export * from "./matlab.ts";
export * from "./download.ts";
export * from "./fs.ts";
