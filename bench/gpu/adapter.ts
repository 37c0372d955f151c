// Prints the WebGPU adapter the job will train on: name, fallback flag, features, key limits.
// Usage: deno run -A bench/gpu/adapter.ts   (exit code 1 when there is no adapter)
const adapter = await navigator.gpu?.requestAdapter({ powerPreference: "high-performance" });
if (!adapter) {
  console.log("RESULT adapter none: no WebGPU adapter (check VK_DRIVER_FILES and libvulkan1)");
  Deno.exit(1);
}
const i = adapter.info;
console.log(
  `RESULT adapter ${i.description || i.device} (vendor ${i.vendor}, architecture ` +
    `${i.architecture || "?"}, fallback ${i.isFallbackAdapter})`,
);
console.log(`RESULT features ${[...adapter.features].sort().join(" ")}`);
const l = adapter.limits;
console.log(
  `RESULT limits maxStorageBufferBindingSize ${l.maxStorageBufferBindingSize}, ` +
    `maxComputeWorkgroupStorageSize ${l.maxComputeWorkgroupStorageSize}, ` +
    `maxComputeInvocationsPerWorkgroup ${l.maxComputeInvocationsPerWorkgroup}, ` +
    `maxStorageBuffersPerShaderStage ${l.maxStorageBuffersPerShaderStage}`,
);
