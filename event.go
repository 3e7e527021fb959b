package hfmerge

import "time"

// Stage is one kind of work a run does to every shard.
type Stage string

const (
	StageMerge  Stage = "merge"  // merged shards written to a directory
	StageHash   Stage = "hash"   // merged shards computed to learn their sha256 (push)
	StageUpload Stage = "upload" // bytes sent to the Hub (push)
)

// EventType says what an Event reports.
type EventType int

const (
	// Begin: a stage starts; Bytes is its total.
	Begin EventType = iota
	// Advance: Bytes more of a stage are done (negative: a failed attempt taken back).
	Advance
	// ShardDone: a shard finished a stage; Note says how ("merged", "uploaded",
	// "already on the Hub", "unchanged"), Bytes its size, Elapsed the time it took.
	ShardDone
	// End: a stage is over.
	End
)

// Event reports progress, as restic's archiver reports it: the library says what
// happened and the caller draws bars or writes log lines. Events of one run may come
// from several goroutines; a Progress function must be safe for that.
type Event struct {
	Type    EventType
	Stage   Stage
	Shard   string
	Bytes   int64
	Note    string
	Elapsed time.Duration
}

// Progress receives events; nil drops them.
type Progress func(Event)

func (p Progress) emit(e Event) {
	if p != nil {
		p(e)
	}
}

func (p Progress) advance(s Stage) func(int64) {
	if p == nil {
		return nil
	}
	return func(n int64) { p(Event{Type: Advance, Stage: s, Bytes: n}) }
}
