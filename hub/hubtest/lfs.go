package hubtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
)

const lfsMediaType = "application/vnd.git-lfs+json"

// isSHA256 says whether s looks like an LFS oid: 64 lowercase hex digits.
func isSHA256(s string) bool { return len(s) == 64 && isLowerHex(s) }

func isLowerHex(s string) bool {
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// upload is an LFS object the batch endpoint has handed out upload actions for.
type upload struct {
	id       string
	repo     repoKey
	oid      string
	size     int64
	chunk    int64 // 0 for a basic upload
	partData map[int][]byte
	partETag map[int]string
}

func (u *upload) parts() int {
	if u.chunk == 0 {
		return 1
	}
	return int((u.size + u.chunk - 1) / u.chunk)
}

type lfsObject struct {
	OID     string      `json:"oid"`
	Size    int64       `json:"size"`
	Actions *lfsActions `json:"actions,omitempty"`
	Error   *lfsError   `json:"error,omitempty"`
}

type lfsActions struct {
	Upload   *lfsAction `json:"upload,omitempty"`
	Verify   *lfsAction `json:"verify,omitempty"`
	Download *lfsAction `json:"download,omitempty"`
}

type lfsAction struct {
	Href      string            `json:"href"`
	Header    map[string]string `json:"header,omitempty"`
	ExpiresIn int64             `json:"expires_in,omitempty"`
}

type lfsError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func writeLFSError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("X-Error-Message", msg)
	writeJSONType(w, status, lfsMediaType, map[string]string{"message": msg})
}

// batch answers POST /{repo}.git/info/lfs/objects/batch. For "upload", an object the
// store already has comes back without actions; others get a basic PUT URL on the
// storage host, or, when the client offers "multipart" and the object is larger than
// the chunk size, a completion URL with chunk_size and one signed URL per part in the
// header. "xet" is chosen only on a Hub with Xet (WithXet) for clients that offer it:
// objects to upload then get the CAS URL, a write token and a refresh URL (see
// xetUploadActionLocked); otherwise clients that offer it fall back to these
// transfers. "download" is answered too.
func (h *Hub) batch(c *call) {
	var req struct {
		Operation string   `json:"operation"`
		Transfers []string `json:"transfers"`
		HashAlgo  string   `json:"hash_algo"`
		Ref       *struct {
			Name string `json:"name"`
		} `json:"ref"`
		Objects []struct {
			OID  string `json:"oid"`
			Size int64  `json:"size"`
		} `json:"objects"`
	}
	if err := json.NewDecoder(io.LimitReader(c.r.Body, 10<<20)).Decode(&req); err != nil {
		writeLFSError(c.w, http.StatusBadRequest, "invalid batch request: "+err.Error())
		return
	}
	if req.HashAlgo != "" && req.HashAlgo != "sha256" && req.HashAlgo != "sha_256" {
		writeLFSError(c.w, http.StatusConflict, "unsupported hash algorithm "+strconv.Quote(req.HashAlgo))
		return
	}
	need := accessWrite
	switch req.Operation {
	case "upload":
	case "download":
		need = accessDownload
	default:
		writeLFSError(c.w, http.StatusUnprocessableEntity, "unsupported operation "+strconv.Quote(req.Operation))
		return
	}
	transfers := req.Transfers
	if len(transfers) == 0 {
		transfers = []string{"basic"}
	}
	multipart := slices.Contains(transfers, "multipart")
	useXet := h.xet != nil && req.Operation == "upload" && slices.Contains(transfers, "xet")
	if !useXet && !multipart && !slices.Contains(transfers, "basic") {
		writeLFSError(c.w, http.StatusUnprocessableEntity, "hubtest offers only the basic and multipart transfers (no xet)")
		return
	}
	p := h.who(c.r)
	h.mu.Lock()
	defer h.mu.Unlock()
	rp, ok := h.repoFor(c, p, need)
	if !ok {
		return
	}
	chosen := "basic"
	expires := int64(h.cfg.urlExpiry.Seconds())
	out := []lfsObject{}
	var xetAction *lfsAction // one CAS token per batch
	for _, o := range req.Objects {
		obj := lfsObject{OID: o.OID, Size: o.Size}
		stored, have := h.objects[o.OID]
		switch {
		case !isSHA256(o.OID) || o.Size < 0:
			obj.Error = &lfsError{http.StatusUnprocessableEntity, "invalid object (oid must be 64 lowercase hex, size >= 0)"}
		case have && int64(len(stored)) != o.Size:
			obj.Error = &lfsError{http.StatusUnprocessableEntity, fmt.Sprintf("object %s exists with size %d", o.OID, len(stored))}
		case req.Operation == "download" && !have:
			obj.Error = &lfsError{http.StatusNotFound, "object does not exist"}
		case req.Operation == "download":
			obj.Actions = &lfsActions{Download: &lfsAction{Href: h.signedURLLocked("/lfs/"+o.OID, nil), ExpiresIn: expires}}
		case have: // already stored: no actions, nothing to upload
		case useXet:
			if xetAction == nil {
				ref := ""
				if req.Ref != nil {
					ref = req.Ref.Name
				}
				xetAction = h.xetUploadActionLocked(c, rp, ref)
			}
			obj.Actions = &lfsActions{Upload: xetAction}
		default:
			up := &upload{id: newID(12), repo: rp.key(), oid: o.OID, size: o.Size,
				partData: map[int][]byte{}, partETag: map[int]string{}}
			if multipart && o.Size > h.cfg.chunkSize {
				up.chunk = h.cfg.chunkSize
				chosen = "multipart"
			}
			h.uploads[up.id] = up
			obj.Actions = &lfsActions{Upload: h.uploadActionLocked(up, expires)}
			if h.cfg.verifyAction {
				obj.Actions.Verify = &lfsAction{Href: h.baseURL(c.r) + "/" + rp.urlPath() + ".git/info/lfs/objects/verify"}
			}
		}
		out = append(out, obj)
	}
	if useXet {
		chosen = "xet"
	}
	writeJSONType(c.w, http.StatusOK, lfsMediaType, map[string]any{"transfer": chosen, "objects": out, "hash_algo": "sha256"})
}

// uploadActionLocked builds the upload action of one object. h.mu must be held.
func (h *Hub) uploadActionLocked(up *upload, expires int64) *lfsAction {
	if up.chunk == 0 {
		return &lfsAction{Href: h.signedURLLocked("/upload/"+up.id, nil), ExpiresIn: expires}
	}
	header := map[string]string{"chunk_size": strconv.FormatInt(up.chunk, 10)}
	for i := 1; i <= up.parts(); i++ {
		header[fmt.Sprintf("%05d", i)] = h.signedURLLocked(fmt.Sprintf("/upload/%s/%d", up.id, i), nil)
	}
	return &lfsAction{
		Href:      h.signedURLLocked("/api/complete_multipart", url.Values{"upload": {up.id}}),
		Header:    header,
		ExpiresIn: expires,
	}
}

// complete answers the multipart completion POST {oid, parts:[{partNumber, etag}]}:
// the parts must be 1..N in order with the ETags the part PUTs returned; the assembled
// object must have the declared size and sha256. Like the real completion URL it is
// signed and needs no Authorization.
func (h *Hub) complete(c *call) {
	if !h.checkSigned(c) {
		return
	}
	var req struct {
		OID   string `json:"oid"`
		Parts []struct {
			PartNumber int    `json:"partNumber"`
			ETag       string `json:"etag"`
		} `json:"parts"`
	}
	if err := json.NewDecoder(io.LimitReader(c.r.Body, 10<<20)).Decode(&req); err != nil {
		writeLFSError(c.w, http.StatusBadRequest, "invalid completion body: "+err.Error())
		return
	}
	h.mu.Lock()
	up := h.uploads[c.r.URL.Query().Get("upload")]
	if up == nil {
		h.mu.Unlock()
		writeLFSError(c.w, http.StatusNotFound, "no such multipart upload")
		return
	}
	var buf bytes.Buffer
	var problem string
	switch {
	case req.OID != up.oid:
		problem = fmt.Sprintf("oid %q does not match the upload's %s", req.OID, up.oid)
	case len(req.Parts) != up.parts():
		problem = fmt.Sprintf("got %d parts, want %d", len(req.Parts), up.parts())
	}
	for i, pt := range req.Parts {
		if problem != "" {
			break
		}
		switch {
		case pt.PartNumber != i+1:
			problem = fmt.Sprintf("part %d listed at position %d: parts must be in order", pt.PartNumber, i+1)
		case up.partETag[pt.PartNumber] == "":
			problem = fmt.Sprintf("part %d was never uploaded", pt.PartNumber)
		case up.partETag[pt.PartNumber] != pt.ETag:
			problem = fmt.Sprintf("part %d: etag %s does not match %s", pt.PartNumber, pt.ETag, up.partETag[pt.PartNumber])
		default:
			buf.Write(up.partData[pt.PartNumber])
		}
	}
	h.mu.Unlock()
	data := buf.Bytes()
	if problem == "" && (int64(len(data)) != up.size || sha256Hex(data) != up.oid) {
		problem = fmt.Sprintf("assembled object has size %d and sha256 %s, want %d and %s", len(data), sha256Hex(data), up.size, up.oid)
	}
	if problem != "" {
		writeLFSError(c.w, http.StatusBadRequest, problem)
		return
	}
	if err := h.storeObject(up.oid, data); err != nil {
		writeLFSError(c.w, http.StatusInternalServerError, err.Error())
		return
	}
	h.mu.Lock()
	delete(h.uploads, up.id)
	h.mu.Unlock()
	writeJSONType(c.w, http.StatusOK, lfsMediaType, map[string]any{"success": true})
}

// verify answers the verify action POST {oid, size}: 200 if the object is stored with
// that size, 404 otherwise. It needs a token with write access to the repo.
func (h *Hub) verify(c *call) {
	var req struct {
		OID  string `json:"oid"`
		Size int64  `json:"size"`
	}
	if err := json.NewDecoder(io.LimitReader(c.r.Body, 1<<20)).Decode(&req); err != nil {
		writeLFSError(c.w, http.StatusBadRequest, "invalid verify body: "+err.Error())
		return
	}
	p := h.who(c.r)
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.repoFor(c, p, accessWrite); !ok {
		return
	}
	data, ok := h.objects[req.OID]
	if !ok || int64(len(data)) != req.Size {
		writeLFSError(c.w, http.StatusNotFound, fmt.Sprintf("object %s of size %d is not stored", req.OID, req.Size))
		return
	}
	writeJSONType(c.w, http.StatusOK, lfsMediaType, map[string]any{"success": true})
}

// storeObject adds content to the LFS store (and to the state dir when persisting).
func (h *Hub) storeObject(oid string, data []byte) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.objects[oid]; ok {
		return nil
	}
	if err := h.persistObjectLocked(oid, data); err != nil {
		return err
	}
	h.objects[oid] = data
	return nil
}
