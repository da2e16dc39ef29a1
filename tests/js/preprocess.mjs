// transformers.js's own preprocessing of images, as its AutoProcessor builds it from an exported folder's
// preprocessor_config.json (tests/test_clients.py compares the pixels with this package's processor).
//   node preprocess.mjs <folder> <out.f32> <image> [<image> ...]
// Writes the pixel_values (float32, N x 3 x size x size, little endian) to <out.f32> and prints their shape.
import { writeFileSync } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import { AutoImageProcessor, RawImage, env } from "@huggingface/transformers";

const [folder, out, ...paths] = process.argv.slice(2);
env.allowRemoteModels = false; // the folder only, never the Hub
env.localModelPath = dirname(resolve(folder));
const processor = await AutoImageProcessor.from_pretrained(basename(resolve(folder)));
const images = await Promise.all(paths.map((path) => RawImage.read(path)));
const { pixel_values } = await processor(images);
writeFileSync(out, Buffer.from(pixel_values.data.buffer, pixel_values.data.byteOffset, pixel_values.data.byteLength));
console.log(JSON.stringify({ dims: pixel_values.dims, processor: processor.constructor.name }));
