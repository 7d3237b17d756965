# bash completion for resdepth: eval "$(resdepth completion bash)", e.g. in ~/.bashrc.
# Completes the commands, and for train and sweep every key, the allowed values of each choice and
# every group's presets, with those of any --config-dir on the line (`resdepth completion query`,
# answered from a cached table).
_resdepth_complete() {
    local line=${COMP_LINE:0:COMP_POINT}
    local cur=${line##*[[:space:]]}
    local -a words
    read -r -a words <<< "${line% "$cur"}"
    # readline replaces only the text after the last word-break character (= and : by default)
    local i keep=$cur
    for ((i = ${#cur} - 1; i >= 0; i--)); do
        if [[ $COMP_WORDBREAKS == *"${cur:i:1}"* ]]; then
            keep=${cur:i+1}
            break
        fi
    done
    local before=${cur:0:${#cur}-${#keep}}
    local choices
    if ((${#words[@]} < 2)); then
        choices="__COMMANDS__"
        compopt +o nospace 2> /dev/null  # a command is a whole word
    elif [[ ${words[1]} == train || ${words[1]} == sweep ]]; then
        local -a dirs=()
        for ((i = 2; i < ${#words[@]}; i++)); do
            if [[ ${words[i]} == --config-dir || ${words[i]} == -cd ]]; then
                dirs+=(--config-dir "${words[i + 1]}")
            fi
        done
        choices=$("${words[0]}" completion query "${words[1]}" "${dirs[@]}" -- "$cur" 2> /dev/null)
    elif [[ ${words[1]} == completion ]]; then
        choices="bash"
        compopt +o nospace 2> /dev/null
    else
        COMPREPLY=()  # results, plot: a folder; bench: its own --options
        return
    fi
    local -a matches
    mapfile -t matches < <(compgen -W "$choices" -- "$cur")
    COMPREPLY=("${matches[@]#"$before"}")
}
complete -o nospace -o default -F _resdepth_complete resdepth
