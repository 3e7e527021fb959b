package hubtest

import (
	"encoding/json"
	"encoding/xml"
	"net/http"
	"slices"
	"strings"
)

// Error codes the Hub puts in X-Error-Code.
const (
	CodeRepoNotFound     = "RepoNotFound"
	CodeRevisionNotFound = "RevisionNotFound"
	CodeEntryNotFound    = "EntryNotFound"
	CodeGatedRepo        = "GatedRepo"
)

// msgInvalidCredentials is the message huggingface_hub tells apart from an ambiguous
// "repo not found" 401.
const msgInvalidCredentials = "Invalid credentials in Authorization header"

// writeError answers with the Hub's error shape: X-Error-Code (if any), X-Error-Message
// and a JSON body {"error": msg}.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	if code != "" {
		w.Header().Set("X-Error-Code", code)
	}
	w.Header().Set("X-Error-Message", msg)
	writeJSON(w, status, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	writeJSONType(w, status, "application/json; charset=utf-8", v)
}

func writeJSONType(w http.ResponseWriter, status int, ctype string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only our own types are marshalled
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Content-Length", itoa(int64(len(b))))
	w.WriteHeader(status)
	w.Write(b)
}

// writeS3Error answers as S3 does, for the storage host.
func writeS3Error(w http.ResponseWriter, status int, code, msg string) {
	b, _ := xml.Marshal(struct {
		XMLName   xml.Name `xml:"Error"`
		Code      string
		Message   string
		RequestID string `xml:"RequestId"`
	}{Code: code, Message: msg, RequestID: newID(8)})
	b = append([]byte(xml.Header), b...)
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("Content-Length", itoa(int64(len(b))))
	w.WriteHeader(status)
	w.Write(b)
}

// principal is who a request is from.
type principal struct {
	token   Token
	present bool // an Authorization header was sent
	valid   bool // and it named a known token
}

func (p principal) user() string {
	if !p.valid {
		return ""
	}
	return p.token.User
}

// who reads the bearer token. An unknown token is an error on every authenticated
// route, as on the Hub (401 "Invalid credentials in Authorization header").
func (h *Hub) who(r *http.Request) principal {
	a := r.Header.Get("Authorization")
	if a == "" {
		return principal{}
	}
	v, ok := strings.CutPrefix(a, "Bearer ")
	if !ok {
		return principal{present: true}
	}
	h.mu.Lock()
	t, ok := h.tokens[strings.TrimSpace(v)]
	h.mu.Unlock()
	return principal{token: t, present: true, valid: ok}
}

// isMemberLocked says whether user may act for namespace ns (it is the user, or an
// org the user belongs to).
func (h *Hub) isMemberLocked(user, ns string) bool {
	return user != "" && (user == ns || h.orgs[ns][user])
}

type access int

const (
	accessRead     access = iota // metadata and listings
	accessDownload               // file contents: also passes the gate
	accessWrite
)

// repoFor finds the repo of a call and checks access, writing the Hub's error reply
// when it fails. It must be called with h.mu held.
//
// Rules, following the Hub: a missing repo and a private repo the caller cannot read
// answer the same way (401 RepoNotFound without a valid token, 404 with one), so a
// client cannot tell them apart. Writing needs a write token of the owner or of a
// member of the owning org: 401 without a token, 403 otherwise. Contents of a gated
// repo need the owner, a member, or a user granted access (GrantAccess): 401
// GatedRepo without a token, 403 GatedRepo with one.
func (h *Hub) repoFor(c *call, p principal, need access) (*repo, bool) {
	if p.present && !p.valid {
		writeError(c.w, http.StatusUnauthorized, "", msgInvalidCredentials)
		return nil, false
	}
	rp := h.repos[c.repo]
	member := rp != nil && h.isMemberLocked(p.user(), rp.owner())
	if rp == nil || (rp.Private && !member) {
		status := http.StatusNotFound
		if !p.valid {
			status = http.StatusUnauthorized
		}
		writeError(c.w, status, CodeRepoNotFound, "Repository not found")
		return nil, false
	}
	switch need {
	case accessDownload:
		if rp.Gated && !member && !rp.Granted[p.user()] {
			status, msg := http.StatusForbidden, "Access to model "+rp.ID+" is restricted and you are not in the authorized list. Visit "+h.URL()+"/"+rp.urlPath()+" to ask for access."
			if !p.valid {
				status, msg = http.StatusUnauthorized, "Access to model "+rp.ID+" is restricted. You must have access to it and be authenticated to access it. Please log in."
			}
			writeError(c.w, status, CodeGatedRepo, msg)
			return nil, false
		}
	case accessWrite:
		if !p.valid {
			writeError(c.w, http.StatusUnauthorized, "", "You must be authenticated to perform this action.")
			return nil, false
		}
		if ok, msg := h.mayWriteLocked(p.token, c.repo.kind, rp.ID); !ok {
			writeError(c.w, http.StatusForbidden, "", msg)
			return nil, false
		}
	}
	return rp, true
}

// mayWriteLocked decides whether token t may write to (or create) the repo id of kind,
// with the Hub's message when it may not. The user must be the owner or a member of
// the owning org; a write or app token may then write; a fine-grained token needs
// repo.write globally, on the owner's user or org entity, or on the repo itself.
func (h *Hub) mayWriteLocked(t Token, kind, id string) (bool, string) {
	ns, _, _ := strings.Cut(id, "/")
	if !h.isMemberLocked(t.User, ns) {
		return false, "You don't have the rights to write to " + id + " (" + t.User + " is not " + ns + " nor one of its members)."
	}
	switch t.Scope {
	case ScopeWrite, ScopeApp:
		return true, ""
	case ScopeFineGrained:
		entity := "user"
		if ns != t.User {
			entity = "org"
		}
		if fg := t.FineGrained; fg != nil {
			if slices.Contains(fg.Global, PermRepoWrite) {
				return true, ""
			}
			for _, s := range fg.Scoped {
				if ((s.EntityType == entity && s.Entity == ns) || (s.EntityType == kind && s.Entity == id)) &&
					slices.Contains(s.Permissions, PermRepoWrite) {
					return true, ""
				}
			}
		}
		return false, "This action is not allowed by the fine-grained permissions of the token \"" + t.Name +
			"\": it lacks " + PermRepoWrite + " on the " + entity + " " + ns + "."
	}
	return false, "You don't have the rights to write to " + id + " (token \"" + t.Name + "\" is " + string(t.Scope) + ")."
}

// whoami answers /api/whoami-v2 in the Hub's shape, trimmed to what clients read:
// name, orgs with the member's role, and auth.accessToken with the token's role
// ("read" or "write"). A client checks write access by role == "write" and the target
// namespace being its name or one of its orgs.
func (h *Hub) whoami(c *call) {
	p := h.who(c.r)
	if !p.valid {
		msg := "Invalid username or password."
		if p.present {
			msg = msgInvalidCredentials
		}
		writeError(c.w, http.StatusUnauthorized, "", msg)
		return
	}
	h.mu.Lock()
	type org struct {
		ID        string `json:"id"`
		Type      string `json:"type"`
		Name      string `json:"name"`
		Fullname  string `json:"fullname"`
		RoleInOrg string `json:"roleInOrg"`
	}
	orgs := []org{}
	for _, name := range sortedKeys(h.orgs) {
		if h.orgs[name][p.token.User] {
			orgs = append(orgs, org{objectID("org:" + name), "org", name, name, "write"})
		}
	}
	h.mu.Unlock()
	writeJSON(c.w, http.StatusOK, map[string]any{
		"type":          "user",
		"id":            objectID("user:" + p.token.User),
		"name":          p.token.User,
		"fullname":      p.token.User,
		"emailVerified": true,
		"isPro":         false,
		"canPay":        false,
		"orgs":          orgs,
		"auth":          authInfo(p.token),
	})
}

// authInfo is whoami-v2's auth object for a token, in the Hub's shapes (docs/hub.md):
// classic tokens {type: "access_token", accessToken: {displayName, role}}; fine-grained
// ones add role "fineGrained" and fineGrained {canReadGatedRepos, global, scoped:
// [{entity: {_id, type, name}, permissions}]}; app and OAuth tokens have
// {type: "app_token_as_user"} and no accessToken.
func authInfo(t Token) map[string]any {
	if t.Scope == ScopeApp {
		return map[string]any{"type": "app_token_as_user"}
	}
	at := map[string]any{"displayName": t.Name, "role": string(t.Scope)}
	if t.Scope == ScopeFineGrained {
		fg := FineGrained{}
		if t.FineGrained != nil {
			fg = *t.FineGrained
		}
		scoped := []map[string]any{}
		for _, s := range fg.Scoped {
			scoped = append(scoped, map[string]any{
				"entity":      map[string]string{"_id": objectID(s.EntityType + ":" + s.Entity), "type": s.EntityType, "name": s.Entity},
				"permissions": append([]string{}, s.Permissions...),
			})
		}
		at["fineGrained"] = map[string]any{"canReadGatedRepos": false, "global": append([]string{}, fg.Global...), "scoped": scoped}
	}
	return map[string]any{"type": "access_token", "accessToken": at}
}
