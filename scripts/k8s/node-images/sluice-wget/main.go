// The subset of busybox's wget that the chart's `helm test` Pod uses:
// `wget [-q] [-O FILE|-O-] [-T SECONDS] URL`. It exits 1 unless the answer
// is 2xx, printing the body to FILE (`-` is standard output).
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	out, timeout, url := "", 10*time.Second, ""
	args := os.Args[1:]
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-q":
		case strings.HasPrefix(a, "-O"):
			if out = strings.TrimPrefix(a, "-O"); out == "" && i+1 < len(args) {
				i++
				out = args[i]
			}
		case strings.HasPrefix(a, "-T"):
			v := strings.TrimPrefix(a, "-T")
			if v == "" && i+1 < len(args) {
				i++
				v = args[i]
			}
			seconds, err := strconv.Atoi(v)
			if err != nil {
				fail("bad -T %q", v)
			}
			timeout = time.Duration(seconds) * time.Second
		case strings.HasPrefix(a, "-"):
			fail("unknown option %s", a)
		default:
			url = a
		}
	}
	if url == "" {
		fail("usage: wget [-q] [-O FILE] [-T SECONDS] URL")
	}
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get(url)
	if err != nil {
		fail("%v", err)
	}
	defer resp.Body.Close()
	w := io.Discard
	switch out {
	case "":
	case "-":
		w = os.Stdout
	default:
		f, err := os.Create(out)
		if err != nil {
			fail("%v", err)
		}
		defer f.Close()
		w = f
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		fail("%v", err)
	}
	if resp.StatusCode/100 != 2 {
		fail("server returned %s", resp.Status)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "wget: "+format+"\n", args...)
	os.Exit(1)
}
