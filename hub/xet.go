package hub

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// XetToken is a write token of the Hub's Xet storage (CAS), as the token route or the
// LFS batch's "xet" action gives it. The hub package only fetches it; the upload
// converts it for the xet client. AccessToken is a CAS token, never the Hub token.
type XetToken struct {
	AccessToken string
	Expiry      time.Time
	CASURL      string
	SessionID   string // the batch action's X-Xet-Session-Id, if any
	RefreshURL  string // where a fresh token is fetched (the batch action's href)
}

// ErrNoXet is the Hub saying that a repo has no Xet storage: its token route answers
// 404 (an old or self-hosted Hub, or a repo not on Xet).
var ErrNoXet = errors.New("hub: the Hub offers no Xet storage for this repo")

// XetWriteToken asks for a CAS write token for rev of a repo (GET
// /api/{type}s/{repo}/xet-write-token/{rev}); for a pull request, the token is for a
// new pull request against rev (?create_pr=1), and the default branch is named "None",
// as huggingface_hub and huggingface.js do (docs/xet-hub.md).
func (c *Client) XetWriteToken(ctx context.Context, r Repo, rev string, pr bool) (XetToken, error) {
	if rev == "" {
		rev = "main"
	}
	q := url.Values{}
	if pr {
		q.Set("create_pr", "1")
		if rev == "main" {
			rev = "None"
		}
	}
	return c.routeXetToken(ctx, c.apiURL(r.apiPath()+"/xet-write-token/"+escapeRev(rev), q))
}

// XetReadToken asks for a CAS read token for rev of a repo (GET
// /api/{type}s/{repo}/xet-read-token/{rev}; spec auth.md): what reading a Xet file's
// reconstruction and the global dedup index needs. ErrNoXet when the Hub has none.
func (c *Client) XetReadToken(ctx context.Context, r Repo, rev string) (XetToken, error) {
	if rev == "" {
		rev = "main"
	}
	return c.routeXetToken(ctx, c.apiURL(r.apiPath()+"/xet-read-token/"+escapeRev(rev), nil))
}

// routeXetToken fetches a token from a token route, which is also where it is
// refreshed; ErrNoXet when the route is not there.
func (c *Client) routeXetToken(ctx context.Context, u *url.URL) (XetToken, error) {
	t, err := c.fetchXetToken(ctx, u)
	var he *HTTPError
	if errors.As(err, &he) && (he.Status == http.StatusNotFound || he.Status == http.StatusNotImplemented) {
		return XetToken{}, fmt.Errorf("%w (%w)", ErrNoXet, err)
	}
	if err != nil {
		return XetToken{}, err
	}
	t.RefreshURL = u.String()
	return t, nil
}

// RefreshXetToken fetches a fresh token from a refresh URL (a batch action's href).
// The URL must be on the Hub's own host: it gets the Hub token.
func (c *Client) RefreshXetToken(ctx context.Context, href string) (XetToken, error) {
	u, err := url.Parse(href)
	if err != nil || !c.sameHost(u) {
		return XetToken{}, fmt.Errorf("hub: the Xet token refresh URL is not on %s", c.endpoint.Host)
	}
	t, err := c.fetchXetToken(ctx, u)
	if err != nil {
		return XetToken{}, err
	}
	t.RefreshURL = href
	return t, nil
}

func (c *Client) fetchXetToken(ctx context.Context, u *url.URL) (XetToken, error) {
	var out struct {
		AccessToken string `json:"accessToken"`
		Exp         int64  `json:"exp"`
		CASURL      string `json:"casUrl"`
	}
	if _, err := c.getJSON(ctx, u, &out); err != nil {
		return XetToken{}, err
	}
	if out.AccessToken == "" || out.CASURL == "" || out.Exp <= 0 {
		return XetToken{}, fmt.Errorf("hub: GET %s: the Xet token answer lacks accessToken, exp or casUrl", u.Path)
	}
	return XetToken{AccessToken: out.AccessToken, Expiry: time.Unix(out.Exp, 0), CASURL: out.CASURL}, nil
}

// xetAction reads the LFS batch's "xet" upload action: the CAS URL, token, expiry (unix
// seconds) and session id in its header, the refresh URL in href (huggingface.js
// lib/commit.ts; docs/xet-hub.md).
func (c *Client) xetAction(href string, h map[string]string) (*XetToken, error) {
	t := &XetToken{AccessToken: h["X-Xet-Access-Token"], CASURL: h["X-Xet-Cas-Url"], SessionID: h["X-Xet-Session-Id"], RefreshURL: href}
	exp, err := strconv.ParseInt(h["X-Xet-Token-Expiration"], 10, 64)
	if t.AccessToken == "" || t.CASURL == "" || err != nil || exp <= 0 {
		return nil, errors.New("its header lacks X-Xet-Access-Token, X-Xet-Cas-Url or X-Xet-Token-Expiration")
	}
	t.Expiry = time.Unix(exp, 0)
	return t, nil
}
