// Command image writes hfmerge's container image as a tarball, reproducibly and with
// nothing but the Go standard library and a pinned CA bundle: no daemon, no registry,
// no base image. scripts/image.sh builds the binary and runs it; see the README's
// "Container image".
//
//	go run . -binary PATH -out FILE -version V -revision SHA -created UNIXSECONDS [-arch GOARCH]
//	go run . -check FILE   # verify a tarball, print its layer, user, entrypoint, env
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		spec    imageSpec
		bin     = flag.String("binary", "", "the static hfmerge binary to put at "+binaryPath)
		out     = flag.String("out", "", "the tarball to write")
		created = flag.Int64("created", -1, "the image's creation time and every file's mtime, in Unix seconds (SOURCE_DATE_EPOCH)")
		check   = flag.String("check", "", "verify this tarball instead of building one")
	)
	flag.StringVar(&spec.Name, "name", "hfmerge", "the image name of the tag in the tarball")
	flag.StringVar(&spec.Version, "version", "", "hfmerge's version: the tag and org.opencontainers.image.version")
	flag.StringVar(&spec.Revision, "revision", "", "the commit: org.opencontainers.image.revision")
	flag.StringVar(&spec.Source, "source", "https://github.com/hfmerge/hfmerge", "org.opencontainers.image.source")
	flag.StringVar(&spec.Arch, "arch", runtime.GOARCH, "the binary's GOARCH")
	flag.Parse()
	if *check != "" {
		return printCheck(*check)
	}
	if *bin == "" || *out == "" || spec.Version == "" || spec.Revision == "" || *created < 0 {
		return fmt.Errorf("-binary, -out, -version, -revision and -created are required")
	}
	spec.Created = time.Unix(*created, 0)
	binary, err := os.ReadFile(*bin)
	if err != nil {
		return err
	}
	certs, kept, skipped := caBundle()
	fmt.Fprintf(os.Stderr, "image: %d CA roots (%d with a distrust-after constraint left out)\n", kept, skipped)
	tarball, err := buildImage(spec, rootfs(binary, certs))
	if err != nil {
		return err
	}
	// Written beside the final name and renamed, so a killed build leaves no tarball
	// that looks whole.
	tmp, err := os.CreateTemp(filepath.Dir(*out), ".image-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(tarball); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), *out)
}

// printCheck verifies a tarball and prints, one per line, what scripts/image-check.sh
// needs to run the image without a runtime.
func printCheck(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	c, err := verifyImage(data)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	fmt.Println("ref", c.Ref)
	for _, l := range c.Layers {
		fmt.Println("layer", l)
	}
	fmt.Println("user", c.Config.Config.User)
	fmt.Println("workdir", c.Config.Config.WorkingDir)
	fmt.Println("version", c.Config.Config.Labels["org.opencontainers.image.version"])
	for _, e := range c.Config.Config.Entrypoint {
		fmt.Println("entrypoint", e)
	}
	for _, e := range c.Config.Config.Env {
		fmt.Println("env", e)
	}
	return nil
}
