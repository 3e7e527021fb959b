package hub

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

// OptionsFromEnv reads the network time limits from the environment, with the names
// huggingface_hub gives them (constants.py): HF_HUB_ETAG_TIMEOUT, seconds to wait for a
// reply's headers (default 10), and HF_HUB_DOWNLOAD_TIMEOUT, seconds a transfer may
// receive nothing (default 10); and HFMERGE_HUB_RETRIES, the retries of a request
// after its first try (default 5). Unset or empty is the default.
func OptionsFromEnv(o *Options) error {
	secs := func(name string, d *time.Duration) error {
		v := os.Getenv(name)
		if v == "" {
			return nil
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || !(f > 0) || f > 86400 {
			return fmt.Errorf("%s=%q: want a number of seconds above 0", name, v)
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
			return fmt.Errorf("HFMERGE_HUB_RETRIES=%q: want a whole number from 0 to 100", v)
		}
		o.Retries = n
		if n == 0 {
			o.Retries = -1 // negative means none
		}
	}
	return nil
}
