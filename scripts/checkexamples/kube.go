package main

import (
	"fmt"
	"strings"

	"github.com/robfig/cron/v3"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// checkObject decodes one Kubernetes object strictly into its API type and checks the
// fields the API server requires.
func checkObject(doc []byte) (string, []string) {
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		return "?", []string{err.Error()}
	}
	kind := meta.APIVersion + " " + meta.Kind
	if meta.APIVersion == "" || meta.Kind == "" {
		return "no kind", []string{"neither a GitHub Actions workflow (no jobs:) nor a Kubernetes object (apiVersion and kind)"}
	}
	c := &checker{}
	switch kind {
	case "batch/v1 CronJob":
		var o batchv1.CronJob
		if c.decode(doc, &o) {
			c.name("metadata.name", o.Name, 52) // the controller appends 11 characters to name its Jobs
			c.schedule(o.Spec.Schedule)
			c.oneOf("spec.concurrencyPolicy", string(o.Spec.ConcurrencyPolicy), "", "Allow", "Forbid", "Replace")
			c.job("spec.jobTemplate.spec", &o.Spec.JobTemplate.Spec)
		}
	case "batch/v1 Job":
		var o batchv1.Job
		if c.decode(doc, &o) {
			c.name("metadata.name", o.Name, 63)
			c.job("spec", &o.Spec)
		}
	case "v1 Secret":
		var o corev1.Secret
		if c.decode(doc, &o) {
			c.name("metadata.name", o.Name, 253)
		}
	case "v1 ConfigMap":
		var o corev1.ConfigMap
		if c.decode(doc, &o) {
			c.name("metadata.name", o.Name, 253)
		}
	case "v1 PersistentVolumeClaim":
		var o corev1.PersistentVolumeClaim
		if c.decode(doc, &o) {
			c.name("metadata.name", o.Name, 253)
			if len(o.Spec.AccessModes) == 0 {
				c.add("spec.accessModes: required")
			}
		}
	case "v1 ServiceAccount":
		var o corev1.ServiceAccount
		if c.decode(doc, &o) {
			c.name("metadata.name", o.Name, 253)
		}
	case "v1 Service":
		var o corev1.Service
		if c.decode(doc, &o) {
			c.name("metadata.name", o.Name, 63)
		}
	default:
		return kind, []string{"no check for this kind: add it to scripts/checkexamples/kube.go"}
	}
	return kind, c.problems
}

type checker struct{ problems []string }

func (c *checker) add(format string, args ...any) {
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
}

// decode unmarshals strictly: an unknown or misspelt field, or a value of the wrong
// type, is an error, as kubectl's server-side field validation makes it.
func (c *checker) decode(doc []byte, v any) bool {
	if err := yaml.UnmarshalStrict(doc, v); err != nil {
		c.add("%v", err)
		return false
	}
	return true
}

func (c *checker) name(field, name string, maxLen int) {
	if name == "" {
		c.add("%s: required", field)
		return
	}
	for _, m := range validation.IsDNS1123Subdomain(name) {
		c.add("%s %q: %s", field, name, m)
	}
	if len(name) > maxLen {
		c.add("%s %q: longer than %d characters", field, name, maxLen)
	}
}

func (c *checker) oneOf(field, v string, allowed ...string) {
	for _, a := range allowed {
		if v == a {
			return
		}
	}
	c.add("%s %q: want one of %s", field, v, strings.Join(allowed[1:], ", "))
}

func (c *checker) schedule(s string) {
	if s == "" {
		c.add("spec.schedule: required")
		return
	}
	if _, err := cron.ParseStandard(s); err != nil {
		c.add("spec.schedule %q: %v", s, err)
	}
}

func (c *checker) job(field string, s *batchv1.JobSpec) {
	if s.CompletionMode != nil {
		c.oneOf(field+".completionMode", string(*s.CompletionMode), "", "NonIndexed", "Indexed")
		if *s.CompletionMode == batchv1.IndexedCompletion && s.Completions == nil {
			c.add("%s.completions: required with completionMode Indexed", field)
		}
	}
	for _, n := range []struct {
		f string
		v *int32
	}{{"parallelism", s.Parallelism}, {"completions", s.Completions}, {"backoffLimit", s.BackoffLimit}} {
		if n.v != nil && *n.v < 0 {
			c.add("%s.%s: negative", field, n.f)
		}
	}
	if s.ActiveDeadlineSeconds != nil && *s.ActiveDeadlineSeconds <= 0 {
		c.add("%s.activeDeadlineSeconds: must be positive", field)
	}
	c.pod(field+".template.spec", &s.Template.Spec)
}

func (c *checker) pod(field string, s *corev1.PodSpec) {
	// A Job's pods may not restart in place forever: the API server allows only these.
	c.oneOf(field+".restartPolicy", string(s.RestartPolicy), "", "Never", "OnFailure")
	if s.RestartPolicy == "" {
		c.add("%s.restartPolicy: required in a Job's pod template (Never or OnFailure)", field)
	}
	if len(s.Containers) == 0 {
		c.add("%s.containers: required", field)
	}
	volumes := map[string]bool{}
	for i, v := range s.Volumes {
		if v.Name == "" {
			c.add("%s.volumes[%d].name: required", field, i)
		}
		volumes[v.Name] = true
	}
	all := append(append([]corev1.Container(nil), s.InitContainers...), s.Containers...)
	for i, ct := range all {
		f := fmt.Sprintf("%s.containers[%d]", field, i-len(s.InitContainers))
		if i < len(s.InitContainers) {
			f = fmt.Sprintf("%s.initContainers[%d]", field, i)
		}
		if ct.Name == "" {
			c.add("%s.name: required", f)
		} else {
			for _, m := range validation.IsDNS1123Label(ct.Name) {
				c.add("%s.name %q: %s", f, ct.Name, m)
			}
		}
		if ct.Image == "" {
			c.add("%s.image: required", f)
		}
		for j, e := range ct.Env {
			for _, m := range validation.IsEnvVarName(e.Name) {
				c.add("%s.env[%d].name %q: %s", f, j, e.Name, m)
			}
			if e.ValueFrom != nil {
				if r := e.ValueFrom.SecretKeyRef; r != nil && (r.Name == "" || r.Key == "") {
					c.add("%s.env[%d].valueFrom.secretKeyRef: name and key are required", f, j)
				}
			}
		}
		for j, m := range ct.VolumeMounts {
			if !volumes[m.Name] {
				c.add("%s.volumeMounts[%d]: no volume named %q in %s.volumes", f, j, m.Name, field)
			}
			if !strings.HasPrefix(m.MountPath, "/") {
				c.add("%s.volumeMounts[%d].mountPath %q: must be absolute", f, j, m.MountPath)
			}
		}
	}
}
