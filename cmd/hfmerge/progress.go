package main

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cheggaaa/pb/v3"

	"github.com/hfmerge/hfmerge"
)

// meter shows a run's progress: on a terminal one bar per stage, each with its own
// total, rate and ETA; otherwise one log line per shard and stage.
type meter struct {
	mu   sync.Mutex
	st   *state
	mode string
	pool *pb.Pool
	bars map[hfmerge.Stage]*pb.ProgressBar
}

func (st *state) meter(mode string) *meter {
	if mode == "auto" {
		mode = "plain"
		if isTerminal(st.stderr) {
			mode = "bar"
		}
	}
	switch os.Getenv("HF_HUB_DISABLE_PROGRESS_BARS") {
	case "1", "ON", "YES", "TRUE", "true", "on", "yes":
		if mode == "bar" {
			mode = "plain"
		}
	}
	return &meter{st: st, mode: mode, bars: map[hfmerge.Stage]*pb.ProgressBar{}}
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// barTemplate fits 80 columns: stage, bytes done of total (decimal units, as the Hub
// shows sizes), the bar, the rate and the time left.
const barTemplate = `{{string . "prefix"}} {{counters . }} {{bar . "[" "=" ">" " " "]"}} {{speed . "%s/s" "?/s"}} {{rtime . "%s left"}}`

var stageLabel = map[hfmerge.Stage]string{
	hfmerge.StageMerge:  "merge ",
	hfmerge.StageHash:   "hash  ",
	hfmerge.StageUpload: "upload",
}

// event receives the library's progress.
func (m *meter) event(e hfmerge.Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch e.Type {
	case hfmerge.Begin:
		if m.mode != "bar" {
			return
		}
		b := pb.New64(e.Bytes).Set(pb.Bytes, true).Set(pb.SIBytesPrefix, true).Set("prefix", stageLabel[e.Stage]).
			SetTemplateString(barTemplate).SetMaxWidth(120)
		m.bars[e.Stage] = b
		m.add(b)
	case hfmerge.Advance:
		if b := m.bars[e.Stage]; b != nil {
			b.Add64(e.Bytes)
		}
	case hfmerge.End:
		if b := m.bars[e.Stage]; b != nil {
			b.SetCurrent(b.Total())
		}
	case hfmerge.ShardDone:
		if m.mode == "plain" {
			m.st.logger().Info("shard "+e.Note, "stage", string(e.Stage), "shard", e.Shard,
				"size", hfmerge.Human(e.Bytes), "seconds", seconds(e.Elapsed))
		}
	}
}

// add draws a bar below those of the stages begun before it.
func (m *meter) add(b *pb.ProgressBar) {
	if m.pool == nil {
		m.pool = &pb.Pool{Output: m.st.stderr, RefreshRate: 200 * time.Millisecond}
		if err := m.pool.Start(); err != nil {
			fmt.Fprintln(m.st.stderr, "hfmerge: cannot draw progress bars:", err)
			m.pool, m.mode = nil, "plain"
			return
		}
	}
	m.pool.Add(b)
}

// finish stops drawing.
func (m *meter) finish() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pool != nil {
		m.pool.Stop()
		m.pool = nil
	}
}
