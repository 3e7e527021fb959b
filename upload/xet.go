package upload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/xet"
)

// XetMode says whether a push may upload through Xet storage.
type XetMode int

const (
	XetAuto XetMode = iota // Xet where the Hub offers it, LFS elsewhere
	XetOn                  // Xet, or fail when the Hub offers none
	XetOff                 // LFS only
)

// ParseXetMode reads --xet: auto, on or off.
func ParseXetMode(s string) (XetMode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return XetAuto, nil
	case "on":
		return XetOn, nil
	case "off":
		return XetOff, nil
	}
	return XetAuto, fmt.Errorf("%q is not auto, on or off", s)
}

func (m XetMode) String() string {
	switch m {
	case XetOn:
		return "on"
	case XetOff:
		return "off"
	}
	return "auto"
}

// effective applies HF_HUB_DISABLE_XET (huggingface_hub's switch) to auto: a true value
// turns auto off; an explicit on stays on.
func (m XetMode) effective() XetMode {
	if m == XetAuto {
		if v, err := strconv.ParseBool(os.Getenv("HF_HUB_DISABLE_XET")); err == nil && v {
			return XetOff
		}
	}
	return m
}

// ErrNoXet is a push with --xet on to a Hub that offers no Xet storage for the target.
var ErrNoXet = errors.New("--xet on, but the Hub offers no Xet storage for this repo (use --xet auto or off to upload through LFS)")

// Xet uploads files of one push through the Hub's Xet storage: each file in one
// streaming pass (chunks, hashes and sha256 computed on the way, only chunks the CAS
// lacks sent), and the files exist in the CAS once Flush has sent the session's last
// xorb and its shard. Not safe for concurrent use.
type Xet struct {
	client *xet.Client
	log    *slog.Logger
	sess   *xet.Session
	o      xet.Options
	sum    xet.Summary // of every flushed session
}

// StartXet decides, once per push, whether the push uploads through Xet: it returns
// nil (and LFS is used) when the mode is off (or auto with HF_HUB_DISABLE_XET=1), or
// auto and the Hub offers no Xet for the target; with on, ErrNoXet then.
func (t *Target) StartXet(ctx context.Context, log *slog.Logger) (*Xet, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mode := t.Xet.effective()
	if mode == XetOff {
		return nil, nil
	}
	first, err := t.Client.XetWriteToken(ctx, t.Repo, t.branch(), t.PR)
	if errors.Is(err, hub.ErrNoXet) {
		if mode == XetOn {
			return nil, fmt.Errorf("%w: %w", ErrNoXet, err)
		}
		log.Info("the Hub offers no Xet storage for the target; uploading through LFS", "repo", t.Repo.String())
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("asking the Hub for a Xet write token: %w", err)
	}
	log.Info("uploading through Xet", "cas", first.CASURL)
	return &Xet{client: t.xetClient(first, log), log: log, o: xet.Options{XorbBytes: pushXorbBytes, Lookahead: pushLookahead}}, nil
}

// A push's session holds two xorb buffers and the lookahead window besides the merge's
// row blocks; these sizes keep the whole under the 256 MB a push may take (measured by
// scripts/xetrss.sh) at the cost of twice as many xorb posts as 64 MiB xorbs.
const (
	pushXorbBytes = 32 << 20
	pushLookahead = 8 << 20
)

// xetClient is a CAS client whose first token is given and whose later ones come from
// the token's refresh URL.
func (t *Target) xetClient(first hub.XetToken, log *slog.Logger) *xet.Client {
	next := first
	tokens := func(ctx context.Context) (xet.Token, error) {
		tok := next
		next = hub.XetToken{}
		if tok.AccessToken == "" {
			var err error
			if tok, err = t.Client.RefreshXetToken(ctx, first.RefreshURL); err != nil {
				return xet.Token{}, err
			}
		}
		return xet.Token{AccessToken: tok.AccessToken, Expiry: tok.Expiry, CASURL: tok.CASURL}, nil
	}
	o := xet.ClientOptions{Logger: log, SessionID: first.SessionID, UserAgent: "hfmerge"}
	if t.XetTransport != nil {
		o.HTTPClient = &http.Client{Transport: t.XetTransport}
	}
	return xet.NewClient(tokens, o)
}

// SetProgress sets the progress callback of the sessions started from now on.
func (x *Xet) SetProgress(f func(xet.Progress)) { x.o.Progress = f }

// Upload sends one file read from r; it exists in the CAS after the next Flush.
func (x *Xet) Upload(ctx context.Context, r io.Reader) (xet.FileResult, error) {
	return x.session().Upload(ctx, r)
}

func (x *Xet) session() *xet.Session {
	if x.sess == nil {
		o := x.o
		o.Logger = x.log
		x.sess = xet.NewSession(x.client, o)
	}
	return x.sess
}

// Hint tells the session that the CAS holds a file starting with r's bytes (a base
// shard the next upload shares bytes with): the global dedup index is asked about its
// first chunk, and the answer serves every later upload of the session.
func (x *Xet) Hint(ctx context.Context, r io.Reader) error {
	c, err := xet.NewChunkReader(io.LimitReader(r, xet.MaxChunk)).Next()
	if err == io.EOF {
		return nil // an empty file
	}
	if err != nil {
		return err
	}
	return x.session().Hint(ctx, xet.ChunkHash(c))
}

// Pending says whether files were uploaded since the last Flush.
func (x *Xet) Pending() bool { return x.sess != nil }

// Flush ends the session: the last xorb and the shard go up, and every file uploaded
// since the last Flush exists in the CAS. It returns what this session did.
func (x *Xet) Flush(ctx context.Context) (xet.Summary, error) {
	if x.sess == nil {
		return xet.Summary{}, nil
	}
	s, err := x.sess.Close(ctx)
	x.sess = nil
	if err != nil {
		return xet.Summary{}, err
	}
	x.sum.Files += s.Files
	x.sum.XorbsSent += s.XorbsSent
	x.sum.XorbsPresent += s.XorbsPresent
	x.sum.XorbBytes += s.XorbBytes
	x.sum.Shards += s.Shards
	x.sum.ShardBytes += s.ShardBytes
	return s, nil
}

// Total is what every flushed session did together.
func (x *Xet) Total() xet.Summary { return x.sum }

// putXet uploads one object through the "xet" transfer the batch chose: one session,
// one file, checked against the object's sha256.
func putXet(ctx context.Context, t *Target, obj Object, a hub.LFSAction, o Options) error {
	c := t.xetClient(*a.Xet, nil)
	var last int64
	s := xet.NewSession(c, xet.Options{Progress: func(p xet.Progress) {
		if d := p.SentBytes - last; d != 0 {
			last = p.SentBytes
			o.Progress(d)
		}
	}})
	r, done, err := obj.Open(ctx)
	if err != nil {
		return err
	}
	res, err := s.Upload(ctx, io.NewSectionReader(r, 0, obj.Size))
	if derr := done(); err == nil {
		err = derr
	}
	if err != nil {
		return err
	}
	if res.SHA256 != obj.OID || res.Size != obj.Size {
		return fmt.Errorf("the bytes read for %s have sha256 %s and size %d, not the object's", obj.OID, res.SHA256, res.Size)
	}
	_, err = s.Close(ctx)
	return err
}
