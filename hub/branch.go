package hub

import (
	"context"
	"net/http"
	"net/url"
)

// CreateBranch creates branch at from (a branch, tag or commit; "" is the default
// branch), as huggingface_hub's create_branch and huggingface.js's createBranch do:
// POST /api/{type}s/{repo}/branch/{branch} with {"startingPoint": from}. A branch that
// exists already is no error; created says whether this call made it.
func (c *Client) CreateBranch(ctx context.Context, r Repo, branch, from string) (created bool, err error) {
	in := map[string]any{}
	if from != "" {
		in["startingPoint"] = from
	}
	u := c.apiURL(r.apiPath()+"/branch/"+url.PathEscape(branch), nil)
	resp, err := c.postJSON(ctx, u, "application/json", in, nil, http.StatusOK, http.StatusConflict)
	if err != nil {
		return false, err
	}
	return resp.StatusCode == http.StatusOK, nil
}

// DeleteBranch deletes a branch, as huggingface.js's deleteBranch does
// (packages/hub/src/lib/delete-branch.ts): DELETE on the same path CreateBranch posts
// to. A branch that is not there is no error; deleted says whether this call removed it.
func (c *Client) DeleteBranch(ctx context.Context, r Repo, branch string) (deleted bool, err error) {
	u := c.apiURL(r.apiPath()+"/branch/"+url.PathEscape(branch), nil)
	rq := c.newRequest(http.MethodDelete, u, nil)
	resp, err := c.do(ctx, rq, []int{http.StatusOK, http.StatusNoContent, http.StatusNotFound}, nil)
	if err != nil {
		return false, err
	}
	return resp.StatusCode != http.StatusNotFound, nil
}
