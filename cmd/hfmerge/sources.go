package main

import "context"

// loadSources opens the --base and --adapter sources and reads their headers.
func loadSources(ctx context.Context, o *options, open opener) (*loaded, error) {
	base, err := newLocal("--base", o.base, open)
	if err != nil {
		return nil, err
	}
	adapter, err := newLocal("--adapter", o.adapter, open)
	if err != nil {
		return nil, err
	}
	return load(ctx, base, adapter, o.plan)
}
