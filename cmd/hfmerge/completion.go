package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// Shell scripts that ask hfmerge itself for completions (urfave/cli's
// --generate-bash-completion), so that they follow the flag definitions.
const bashCompletion = `_hfmerge() {
  local cur words
  cur="${COMP_WORDS[COMP_CWORD]}"
  words=("${COMP_WORDS[@]:0:COMP_CWORD}")
  COMPREPLY=($(compgen -W "$("${words[@]}" --generate-bash-completion 2>/dev/null)" -- "$cur"))
}
complete -o default -F _hfmerge hfmerge
`

const zshCompletion = `#compdef hfmerge
_hfmerge() {
  local -a opts
  opts=("${(@f)$(${words[@]:0:#words[@]-1} --generate-bash-completion 2>/dev/null)}")
  _describe 'values' opts
}
compdef _hfmerge hfmerge
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script: hfmerge completion bash|zsh|fish, or the man page: hfmerge completion man",
		ArgsUsage: "bash|zsh|fish|man",
		Action: func(c *cli.Context) error {
			switch c.Args().First() {
			case "bash":
				fmt.Fprint(c.App.Writer, bashCompletion)
			case "zsh":
				fmt.Fprint(c.App.Writer, zshCompletion)
			case "fish":
				s, err := c.App.ToFishCompletion()
				if err != nil {
					return err
				}
				fmt.Fprint(c.App.Writer, s)
			case "man":
				s, err := c.App.ToMan()
				if err != nil {
					return err
				}
				fmt.Fprint(c.App.Writer, s)
			default:
				return usageErr("completion: want bash, zsh, fish or man, got %q", c.Args().First())
			}
			return nil
		},
	}
}
