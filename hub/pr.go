package hub

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
)

// MergePullRequest merges pull request n into the branch it targets
// (POST /api/{type}s/{repo}/discussions/{n}/merge, as huggingface_hub's
// merge_pull_request sends it). Like a commit it is sent once: a lost reply returns
// ErrCommitUnknown, and the caller looks at the branch before trying again.
func (c *Client) MergePullRequest(ctx context.Context, r Repo, n int, comment string) error {
	body, err := json.Marshal(map[string]string{"comment": comment})
	if err != nil {
		return err
	}
	rq := c.newRequest(http.MethodPost, c.apiURL(r.apiPath()+"/discussions/"+strconv.Itoa(n)+"/merge", nil), body)
	rq.header.Set("Content-Type", "application/json")
	rq.headerTimeout = slowReplyTimeout
	resp, err := c.once(ctx, rq)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}
