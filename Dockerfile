# hfmerge's container image for those who build with Docker (or podman/buildah):
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t hfmerge .
#
# It pulls golang and distroless images from their registries. The image CI builds and
# checks is scripts/image.sh's, which pulls nothing and is byte-for-byte reproducible;
# this one has the same layout: a static binary at /usr/local/bin/hfmerge, the user
# 65532:65532 (distroless's "nonroot"), HF_HOME under its home, CA certificates.
# scripts/image/dockerfile_test.go checks that the two agree.

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=devel
ARG TARGETOS=linux
ARG TARGETARCH
# .git is not in the build context (.dockerignore), so the version comes from VERSION.
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -buildvcs=false \
	-ldflags "-s -w -buildid= -X github.com/hfmerge/hfmerge.version=$VERSION" \
	-o /out/hfmerge ./cmd/hfmerge
# HF_HOME, made the user's here because the final stage has no shell to do it.
RUN mkdir -p /out/cache/huggingface

# static: no libc, /etc/passwd with nonroot, /home/nonroot, /tmp, CA certificates.
FROM gcr.io/distroless/static-debian13:nonroot
COPY --from=build /out/hfmerge /usr/local/bin/hfmerge
COPY --from=build --chown=65532:65532 /out/cache /home/nonroot/.cache
ENV HOME=/home/nonroot \
	HF_HOME=/home/nonroot/.cache/huggingface \
	SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /home/nonroot
ENTRYPOINT ["/usr/local/bin/hfmerge"]
