// Drives the official @huggingface/hub client against a Hub given by HUB_URL, for
// the Go tests in this directory. Usage: node hub.mjs <command> '<json args>'.
// It prints one JSON object on stdout; any failure exits non-zero with the error on
// stderr. Every call passes hubUrl explicitly so nothing can reach huggingface.co.
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import * as hub from "@huggingface/hub";

const hubUrl = process.env.HUB_URL;
const accessToken = process.env.HF_TOKEN || undefined;
if (!hubUrl) {
	throw new Error("HUB_URL is not set");
}

const sha256 = (buf) => createHash("sha256").update(buf).digest("hex");

const commands = {
	async whoami() {
		return await hub.whoAmI({ hubUrl, accessToken });
	},

	async createRepo({ repo, private: priv }) {
		return await hub.createRepo({ repo, hubUrl, accessToken, private: !!priv });
	},

	// files: [{path, file}] where file is a local path to read.
	async upload({ repo, files, title, branch, isPullRequest, parentCommit, useXet }) {
		const blobs = await Promise.all(
			files.map(async (f) => ({ path: f.path, content: new Blob([await readFile(f.file)]) })),
		);
		const out = await hub.uploadFiles({
			repo, hubUrl, accessToken, files: blobs, commitTitle: title, branch, isPullRequest, parentCommit,
			...(useXet === undefined ? {} : { useXet }),
		});
		return out ?? {};
	},

	async deleteFile({ repo, path }) {
		return (await hub.deleteFile({ repo, hubUrl, accessToken, path })) ?? {};
	},

	async download({ repo, paths, revision }) {
		const out = {};
		for (const path of paths) {
			const blob = await hub.downloadFile({ repo, hubUrl, accessToken, path, revision });
			if (blob === null) {
				out[path] = null;
				continue;
			}
			const buf = Buffer.from(await blob.arrayBuffer());
			out[path] = { size: buf.length, sha256: sha256(buf) };
		}
		return out;
	},

	// Downloads through whatever path the client picks and says whether it was Xet
	// (a XetBlob: reconstruction plus transfer URLs) rather than the LFS redirect.
	async downloadVia({ repo, paths, revision }) {
		const out = {};
		for (const path of paths) {
			const blob = await hub.downloadFile({ repo, hubUrl, accessToken, path, revision });
			const buf = Buffer.from(await blob.arrayBuffer());
			out[path] = { size: buf.length, sha256: sha256(buf), xet: blob instanceof hub.__internal_XetBlob };
		}
		return out;
	},

	// The client's own Xet hashing of a local file (the chunker and hashes huggingface.js
	// uploads with, from its dependency @huggingface/xetchunk-wasm).
	async xetHashes({ file }) {
		const xet = await import("@huggingface/xetchunk-wasm");
		const chunks = xet.getChunks(new Uint8Array(await readFile(file)));
		return {
			fileHash: xet.hashToHex(xet.fileHash(chunks)),
			chunks: chunks.map((c) => xet.hashToHex(c.hash)),
			sizes: chunks.map((c) => c.length),
		};
	},

	async downloadRaw({ repo, path }) {
		const blob = await hub.downloadFile({ repo, hubUrl, accessToken, path, raw: true });
		return { text: blob === null ? null : await blob.text() };
	},

	async listFiles({ repo, recursive, expand, path, revision }) {
		const entries = [];
		for await (const e of hub.listFiles({ repo, hubUrl, accessToken, recursive, expand, path, revision })) {
			entries.push(e);
		}
		return { entries };
	},

	async fileDownloadInfo({ repo, path, revision, raw }) {
		const info = await hub.fileDownloadInfo({ repo, hubUrl, accessToken, path, revision, raw });
		return info === null ? { missing: true } : { size: info.size, etag: info.etag, url: info.url, xet: !!info.xet };
	},

	async fileExists({ repo, path }) {
		return { exists: await hub.fileExists({ repo, hubUrl, accessToken, path }) };
	},

	async modelInfo({ name, additionalFields, revision }) {
		return await hub.modelInfo({ name, hubUrl, accessToken, additionalFields, revision });
	},

	async pathsInfo({ repo, paths, expand, revision }) {
		return { entries: await hub.pathsInfo({ repo, hubUrl, accessToken, paths, expand, revision }) };
	},

	async cacheFile({ repo, path, cacheDir, revision }) {
		return { path: await hub.downloadFileToCacheDir({ repo, hubUrl, accessToken, path, cacheDir, revision }) };
	},

	async snapshot({ repo, cacheDir, revision }) {
		return { path: await hub.snapshotDownload({ repo, hubUrl, accessToken, cacheDir, revision }) };
	},

	async scanCache({ cacheDir }) {
		const info = await hub.scanCacheDir(cacheDir);
		return {
			warnings: info.warnings.map((w) => String(w)),
			repos: info.repos.map((r) => ({ id: r.id, files: r.filesCount, revisions: r.revisions.map((v) => ({ commit: v.commitOid, refs: v.refs, files: v.files.length })) })),
		};
	},
};

const [cmd, rawArgs] = process.argv.slice(2);
if (!commands[cmd]) {
	console.error(`unknown command ${cmd}; known: ${Object.keys(commands).join(", ")}`);
	process.exit(2);
}
try {
	const out = await commands[cmd](rawArgs ? JSON.parse(rawArgs) : {});
	process.stdout.write(JSON.stringify(out) + "\n");
} catch (err) {
	console.error(`${cmd}: ${err?.stack ?? err}`);
	if (err?.statusCode) {
		console.error(`status ${err.statusCode} url ${err.url}`);
	}
	process.exit(1);
}
