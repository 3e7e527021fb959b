package hub

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// WhoAmI is the token's owner and what the token may do, as /api/whoami-v2 says it
// (the shapes are in docs/hub.md).
type WhoAmI struct {
	Name string
	Orgs []string // organizations the user belongs to
	// AuthType is auth.type: "access_token" for a user access token, "app_token" or
	// "app_token_as_user" for OAuth and app tokens.
	AuthType string
	// TokenRole is auth.accessToken.role: "read", "write" or "fineGrained"; "" when
	// whoami has no accessToken (app and OAuth tokens).
	TokenRole   string
	FineGrained *FineGrained // the permissions of a fine-grained token
}

// FineGrained is a fine-grained token's permissions.
type FineGrained struct {
	Global []string           // permissions on no particular entity
	Scoped []ScopedPermission // permissions per user, org or repo
}

// ScopedPermission is the permissions a fine-grained token has on one entity.
type ScopedPermission struct {
	EntityType  string // "user", "org", or a repo kind: "model", "dataset", "space"
	EntityName  string // the user or org name, or the repo id
	Permissions []string
}

// permRepoWrite is the fine-grained permission to push to a repo.
const permRepoWrite = "repo.write"

// CanWrite reports whether the token may push to the repo, refusing only what is
// known to fail: a read token, a write token of someone who is neither the repo's
// owner nor a member of the owning org, or a fine-grained token with repo.write
// neither globally nor for the owner's user or org entity nor for the repo. Where
// whoami cannot tell (app and OAuth tokens, roles it does not know), it allows and
// the Hub decides. why says what is missing, for whom.
func (w *WhoAmI) CanWrite(r Repo) (ok bool, why string) {
	ns, _, _ := strings.Cut(r.ID, "/")
	member := ns == w.Name || slices.Contains(w.Orgs, ns)
	switch w.TokenRole {
	case "read":
		return false, fmt.Sprintf("the token of %s is a read token; publishing needs a write token, or a fine-grained token with %s on %s", w.Name, permRepoWrite, ns)
	case "write", "admin":
		if member {
			return true, ""
		}
		return false, fmt.Sprintf("%s may not write to the namespace %s: it is neither the user nor one of their organizations (%s)", w.Name, ns, orList(w.Orgs))
	case "fineGrained":
		fg := w.FineGrained
		if fg == nil {
			fg = &FineGrained{}
		}
		if slices.Contains(fg.Global, permRepoWrite) {
			return true, ""
		}
		kind := r.Type
		if kind == "" {
			kind = "model"
		}
		entity := "user"
		if ns != w.Name {
			entity = "org"
		}
		var has []string
		for _, s := range fg.Scoped {
			if (s.EntityType == entity && s.EntityName == ns) || (s.EntityType == kind && s.EntityName == r.ID) {
				if slices.Contains(s.Permissions, permRepoWrite) {
					return true, ""
				}
				has = append(has, s.Permissions...)
			}
		}
		return false, fmt.Sprintf("the fine-grained token of %s lacks the %s permission for the %s %s (and for the %s %s); it has %s there",
			w.Name, permRepoWrite, entity, ns, kind, r.ID, orList(has))
	}
	return true, "" // app, OAuth or unknown: the Hub decides
}

func orList(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// WhoAmI asks whom the token belongs to.
func (c *Client) WhoAmI(ctx context.Context) (*WhoAmI, error) {
	var raw struct {
		Name string `json:"name"`
		Orgs []struct {
			Name string `json:"name"`
		} `json:"orgs"`
		Auth struct {
			Type        string `json:"type"`
			AccessToken *struct {
				Role        string `json:"role"`
				FineGrained *struct {
					Global []string `json:"global"`
					Scoped []struct {
						Entity struct {
							Type string `json:"type"`
							Name string `json:"name"`
						} `json:"entity"`
						Permissions []string `json:"permissions"`
					} `json:"scoped"`
				} `json:"fineGrained"`
			} `json:"accessToken"`
		} `json:"auth"`
	}
	if _, err := c.getJSON(ctx, c.apiURL("/api/whoami-v2", nil), &raw); err != nil {
		return nil, err
	}
	w := &WhoAmI{Name: raw.Name, AuthType: raw.Auth.Type}
	for _, o := range raw.Orgs {
		w.Orgs = append(w.Orgs, o.Name)
	}
	if at := raw.Auth.AccessToken; at != nil {
		w.TokenRole = at.Role
		if fg := at.FineGrained; fg != nil {
			w.FineGrained = &FineGrained{Global: fg.Global}
			for _, s := range fg.Scoped {
				w.FineGrained.Scoped = append(w.FineGrained.Scoped, ScopedPermission{s.Entity.Type, s.Entity.Name, s.Permissions})
			}
		}
	}
	return w, nil
}
