// Command etcd is the upstream etcd server: the same one-line main as the
// etcd release binary, built against the pinned go.etcd.io/etcd/server/v3.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
