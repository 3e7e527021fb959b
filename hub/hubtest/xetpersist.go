package hubtest

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Xet state in the state dir (WithStateDir with WithXet), next to persist.go's:
//
//	xet/xorbs/<xorb hash>     accepted xorbs, as uploaded
//	xet/shards/<sha256>       accepted shards, as uploaded
//	xet/shards.log            "<sha256> <repo>" per accepted shard, in order
//
// At New the xorbs are parsed and the shards replayed through the same checks, so
// files, the dedup index and who may read what come back; tokens and counters do not.

func (h *Hub) xetDir() string {
	if h.cfg.stateDir == "" {
		return ""
	}
	return filepath.Join(h.cfg.stateDir, "xet")
}

func (h *Hub) persistXorb(hash xetHash, body []byte) error {
	if h.xetDir() == "" {
		return nil
	}
	return writeOnce(filepath.Join(h.xetDir(), "xorbs", hash.String()), body)
}

// persistShard saves an accepted shard and the repo whose token uploaded it.
func (h *Hub) persistShard(sum string, body []byte, repo repoKey) error {
	dir := h.xetDir()
	if dir == "" {
		return nil
	}
	if err := writeOnce(filepath.Join(dir, "shards", sum), body); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, "shards.log"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("hubtest: save Xet state: %w", err)
	}
	_, werr := fmt.Fprintf(f, "%s %s\n", sum, repo)
	if err := errors.Join(werr, f.Close()); err != nil {
		return fmt.Errorf("hubtest: save Xet state: %w", err)
	}
	return nil
}

// loadXet reads the Xet state back, if the state dir has one.
func (h *Hub) loadXet() error {
	dir := h.xetDir()
	if dir == "" {
		return nil
	}
	x := h.xet
	entries, err := os.ReadDir(filepath.Join(dir, "xorbs"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("hubtest: load Xet state: %w", err)
	}
	for _, de := range entries {
		hash, err := parseXetHash(de.Name())
		if err != nil {
			continue // a temp file
		}
		body, err := os.ReadFile(filepath.Join(dir, "xorbs", de.Name()))
		if err != nil {
			return fmt.Errorf("hubtest: load Xet state: %w", err)
		}
		chunks, _, err := parseXorb(body)
		if err != nil {
			return fmt.Errorf("hubtest: load Xet state: xorb %s: %w", hash, err)
		}
		var raw uint64
		leaves := make([]xetLeaf, len(chunks))
		for i, c := range chunks {
			leaves[i] = xetLeaf{c.hash, uint64(c.rawLen)}
			raw += uint64(c.rawLen)
		}
		if merkleRoot(leaves) != hash {
			return fmt.Errorf("hubtest: load Xet state: xorb %s is corrupt", hash)
		}
		x.xorbs[hash] = &xetXorb{hash: hash, data: body, chunks: chunks, raw: raw}
	}
	log, err := os.Open(filepath.Join(dir, "shards.log"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("hubtest: load Xet state: %w", err)
	}
	defer log.Close()
	sc := bufio.NewScanner(log)
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue // a line cut by a crash
		}
		repo, err := parseRepo(name)
		if err != nil {
			return fmt.Errorf("hubtest: load Xet state: shards.log: %w", err)
		}
		body, err := os.ReadFile(filepath.Join(dir, "shards", sum))
		if err != nil {
			return fmt.Errorf("hubtest: load Xet state: %w", err)
		}
		s, err := parseShard(body)
		if err != nil {
			return fmt.Errorf("hubtest: load Xet state: shard %s: %w", sum, err)
		}
		files, _, problem := x.verifyShardLocked(s)
		if problem != "" {
			return fmt.Errorf("hubtest: load Xet state: shard %s: %s", sum, problem)
		}
		x.shards[sum] = true
		x.registerShardLocked(s, files, repo)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("hubtest: load Xet state: %w", err)
	}
	x.stats, x.checks = XetStats{}, nil
	return nil
}
