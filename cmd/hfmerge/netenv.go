package main

import (
	"os"
	"strconv"
	"time"

	"github.com/hfmerge/hfmerge/hub"
)

// netOptions reads the network time limits from the environment, with the names
// huggingface_hub gives them (constants.py): HF_HUB_ETAG_TIMEOUT, seconds to wait for a
// reply's headers (default 10), and HF_HUB_DOWNLOAD_TIMEOUT, seconds a transfer may
// receive nothing (default 10); and HFMERGE_HUB_RETRIES, the retries of a request
// after its first try (default 5). Unset or empty is the default.
func netOptions(o *hub.Options) error {
	secs := func(name string, d *time.Duration) error {
		v := os.Getenv(name)
		if v == "" {
			return nil
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || !(f > 0) || f > 86400 {
			return usageErr("%s=%q: want a number of seconds above 0", name, v)
		}
		*d = time.Duration(f * float64(time.Second))
		return nil
	}
	if err := secs("HF_HUB_ETAG_TIMEOUT", &o.HeaderTimeout); err != nil {
		return err
	}
	if err := secs("HF_HUB_DOWNLOAD_TIMEOUT", &o.StallTimeout); err != nil {
		return err
	}
	if v := os.Getenv("HFMERGE_HUB_RETRIES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 100 {
			return usageErr("HFMERGE_HUB_RETRIES=%q: want a whole number from 0 to 100", v)
		}
		o.Retries = n
		if n == 0 {
			o.Retries = -1 // hub.Options: negative means none
		}
	}
	return nil
}
