// Package xet speaks the Hugging Face Xet storage protocol (specification 1.1.0,
// hub-docs docs/xet/*.md) on the upload side: the content-defined chunker, the keyed
// BLAKE3 hashes (chunk, xorb, file, verification range, HMAC) and their string form,
// xorbs (chunk streams with LZ4 or byte-grouped LZ4 compression), shards (file
// reconstructions and xorb listings), the CAS HTTP client, and an upload Session that
// streams files through all of them, deduplicating against what it already sent and
// against the CAS's global deduplication index, with bounded memory and no disk. On the
// read side it has what verifying a published file needs without its bytes: a file's
// reconstruction terms (Client.Reconstruction) and the dedup index's xorb listings.
//
// Every constant and byte layout here is checked against xet-core and huggingface.js;
// docs/xet.md records each fact with its source and where the two clients and the
// specification disagree. The package imports nothing else of hfmerge: the Hub call
// that issues CAS tokens is given to it as a TokenSource.
package xet
